// run.js - times N BullMQ jobs from enqueue to all completed, for bench/run.
//   node run.js REDIS KIND N WORKERS CONCURRENCY
// REDIS is a TCP port on 127.0.0.1 or the path of Redis's unix socket.
// Starts WORKERS worker processes (worker.js) with CONCURRENCY each, warms
// them up, then adds N jobs with addBulk in chunks of 1000 and polls the
// queue's completed set until all are there (completed jobs and their return
// values are kept, as jobd keeps result records). Prints one JSON object.
'use strict';
const { fork } = require('child_process');
const path = require('path');
const { Queue } = require('bullmq');
const IORedis = require('ioredis');

const [where, kind, nArg, workersArg, concArg] = process.argv.slice(2);
const n = Number(nArg), nWorkers = Number(workersArg);
const queueName = `bench-${kind}`;
const connection = where.startsWith('/') ? { path: where, maxRetriesPerRequest: null }
  : { host: '127.0.0.1', port: Number(where), maxRetriesPerRequest: null };
const payload = kind === 'hash' ? { data: 'data', iterations: 1000 } : {};
const name = kind === 'hash' ? 'hash' : 'trivial';

async function main() {
  const queue = new Queue(queueName, { connection });
  const redis = new IORedis(connection);
  await queue.obliterate({ force: true }).catch(() => {});
  const workers = [];
  await Promise.all(Array.from({ length: nWorkers }, () => new Promise((resolve, reject) => {
    const w = fork(path.join(__dirname, 'worker.js'), [where, queueName, concArg], { silent: true });
    w.stdout.on('data', (d) => { if (String(d).includes('ready')) resolve(); });
    w.on('exit', (code) => reject(new Error(`worker exited ${code}`)));
    workers.push(w);
  })));
  const completed = () => redis.zcard(`bull:${queueName}:completed`);
  async function runBatch(count) {
    const before = await completed();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < count; i += 1000) {
      const chunk = [];
      for (let k = i; k < Math.min(count, i + 1000); k++) chunk.push({ name, data: payload });
      await queue.addBulk(chunk);
    }
    const sent = process.hrtime.bigint();
    while ((await completed()) < before + count) await new Promise((r) => setTimeout(r, 5));
    const t1 = process.hrtime.bigint();
    return { sendS: Number(sent - t0) / 1e9, elapsedS: Number(t1 - t0) / 1e9 };
  }
  await runBatch(Math.min(1000, n));                       // warm-up
  const { sendS, elapsedS } = await runBatch(n);
  console.log(JSON.stringify({ n, workers: nWorkers, concurrency: Number(concArg),
    send_s: sendS, elapsed_s: elapsedS, rate: n / elapsedS }));
  for (const w of workers) { w.removeAllListeners('exit'); w.kill('SIGTERM'); }
  await queue.close();
  redis.disconnect();
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
