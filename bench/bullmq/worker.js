// worker.js - one BullMQ worker process for bench/run.
//   node worker.js REDIS QUEUE CONCURRENCY   (REDIS: a port or a unix socket path)
// Jobs named "trivial" return at once; jobs named "hash" run sha256 over
// their data `iterations` times (the digest of the digest, as jobd's hash
// jobs do) and return the hex digest. Prints "ready" once connected.
'use strict';
const crypto = require('crypto');
const { Worker } = require('bullmq');

const [where, queue, concurrency] = process.argv.slice(2);
const connection = where.startsWith('/') ? { path: where, maxRetriesPerRequest: null }
  : { host: '127.0.0.1', port: Number(where), maxRetriesPerRequest: null };

function sha256Iterated(data, iterations) {
  let d = Buffer.from(data);
  for (let i = 0; i < iterations; i++) d = crypto.createHash('sha256').update(d).digest();
  return d.toString('hex');
}

const worker = new Worker(queue, async (job) => {
  if (job.name === 'hash') return { digest: sha256Iterated(job.data.data, job.data.iterations) };
  return { slept_ms: 0 };
}, { connection, concurrency: Number(concurrency) });

worker.waitUntilReady().then(() => console.log('ready'));
process.on('SIGTERM', () => worker.close().then(() => process.exit(0)));
