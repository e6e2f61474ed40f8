"""limits.max_held_bytes: intake stops while the envelopes held reach the budget.

Big envelopes are made the way any producer may: JSON allows whitespace
between tokens, and the daemon counts the envelope as received."""
import json
import signal
import socket
import threading
import time

import pytest

from conftest import (NS, SANITIZERS, dead_entries, free_port, publish, result, submit, wait_for,
                      wait_result, wait_results)
from redis_proxy import ForwardingProxy
from test_admin import get, parse_metrics
from test_intake import most_at_once

BUDGET = 200000
PAD = 51000         # 3 of these fit under BUDGET, the 4th reaches it


def padded(envelope, size=PAD):
    """ENVELOPE as JSON text of about SIZE bytes (whitespace before its last key)."""
    text = json.dumps(envelope)
    head, sep, tail = text.rpartition(', "')
    return head + "," + " " * max(0, size - len(text)) + ' "' + tail


def metrics(port):
    return parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])


class Sampler:
    """Samples jobd_held_bytes and jobd_jobs_running from /metrics until stopped."""

    def __init__(self, port):
        self.port = port
        self.held, self.running = [], []
        self.go = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.go:
            try:
                m = metrics(self.port)
                self.held.append(m["jobd_held_bytes"])
                self.running.append(m["jobd_jobs_running"])
            except OSError:
                pass
            time.sleep(0.02)

    def stop(self):
        self.go = False
        self.thread.join()


def results_sampled(r, ids, port, timeout):
    """The records of IDS, waited for while /metrics is sampled; and the Sampler."""
    sampler = Sampler(port)
    try:
        recs = wait_results(r, ids, timeout=timeout)
    finally:
        sampler.stop()
    return recs, sampler


def test_big_envelopes_are_held_within_the_budget(r, start_jobd):
    ids = [f"big{i}" for i in range(20)]
    for i in ids:
        text = padded({"id": i, "type": "sleep", "ms": 500})
        assert abs(len(text) - PAD) < 10
        submit(r, text)
    port = free_port()
    daemon = start_jobd(limits__max_inflight=100, limits__max_held_bytes=BUDGET,
                        admin__listen=f"127.0.0.1:{port}")
    recs, sampler = results_sampled(r, ids, port, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    # The 4th envelope reaches the budget; one read may overshoot it by what
    # it brings, and reads are sized by recent envelopes: 5 at the most.
    assert most_at_once(recs) <= 5, recs
    assert max(sampler.running) <= 5, sampler.running
    assert max(sampler.held) <= BUDGET + PAD, max(sampler.held)
    assert max(sampler.held) >= 3 * PAD     # the budget was used, not one at a time
    assert metrics(port)["jobd_max_held_bytes"] == BUDGET
    assert metrics(port)["jobd_held_bytes"] == 0
    # Said once at info, not once per pause.
    assert daemon.log_text().count("further pauses are logged at debug level") == 1


def test_an_envelope_over_the_budget_runs_when_nothing_else_is_held(r, start_jobd):
    budget = 64 * 1024
    submit(r, padded({"id": "huge", "type": "sleep", "ms": 800}, 3 * budget))
    submit(r, {"id": "small", "type": "sleep", "ms": 1})
    start_jobd(limits__max_held_bytes=budget, limits__max_job_bytes=4 * budget)
    huge, small = wait_result(r, "huge"), wait_result(r, "small")
    assert huge["status"] == "succeeded" and small["status"] == "succeeded"
    # The small one waited on its stream until the huge one was let go.
    assert small["started_at"] >= huge["finished_at"], (huge, small)


def test_sighup_raising_the_budget_lets_more_run(r, start_jobd):
    ids = [f"hup{i}" for i in range(24)]
    for i in ids:
        submit(r, padded({"id": i, "type": "sleep", "ms": 1500}))
    port = free_port()
    daemon = start_jobd(limits__max_held_bytes=BUDGET, admin__listen=f"127.0.0.1:{port}")
    wait_for(lambda: metrics(port)["jobd_held_bytes"] >= BUDGET, what="the budget reached")
    time.sleep(0.3)
    m = metrics(port)
    assert m["jobd_jobs_running"] <= 5 and m["jobd_held_bytes"] <= BUDGET + PAD, m
    daemon.settings["limits"]["max_held_bytes"] = 64 * PAD
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: metrics(port)["jobd_jobs_running"] >= 15, timeout=5,
             what="the rest started after the reload")
    assert metrics(port)["jobd_max_held_bytes"] == 64 * PAD
    snapshot = lambda: json.loads(r.get(daemon.worker_key()) or "{}").get("jobs", {})
    wait_for(lambda: snapshot().get("max_held_bytes") == 64 * PAD, timeout=8,
             what="max_held_bytes in the worker key")
    assert "held_bytes" in snapshot()
    recs = wait_results(r, ids, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    assert most_at_once(recs) >= 15, recs


def test_pubsub_jobs_over_the_budget_are_parked_on_the_stream(r, start_jobd):
    streamed = [f"held{i}" for i in range(4)]
    for i in streamed:
        submit(r, padded({"id": i, "type": "sleep", "ms": 1500}))
    port = free_port()
    start_jobd(limits__max_held_bytes=BUDGET, admin__listen=f"127.0.0.1:{port}")
    wait_for(lambda: metrics(port)["jobd_held_bytes"] >= BUDGET, what="the budget reached")
    length = r.xlen(f"{NS}:queue")
    published = [f"pub{i}" for i in range(3)]
    for i in published:
        assert publish(r, {"id": i, "type": "sleep", "ms": 1}) == 1
    # Not taken into memory: parked durably on the first stream.
    wait_for(lambda: r.xlen(f"{NS}:queue") == length + 3, what="the parked jobs")
    assert metrics(port)["jobd_pubsub_parked_total"] == 3
    assert all(result(r, i) is None for i in published)
    recs = wait_results(r, streamed + published, timeout=20)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    first_done = min(recs[i]["finished_at"] for i in streamed)
    assert all(recs[i]["started_at"] >= first_done for i in published), recs


def test_reclaim_takes_no_more_than_the_budget(r, start_jobd):
    # A dead consumer left ten big entries pending: reclaiming them goes by
    # the same byte budget as reading, not by the free slots alone.
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    ids = [f"orphan{i}" for i in range(10)]
    for i in ids:
        submit(r, padded({"id": i, "type": "sleep", "ms": 500}))
    assert len(r.xreadgroup("jobd", "dead-consumer", {f"{NS}:queue": ">"}, count=10)[0][1]) == 10
    daemon = start_jobd(limits__max_inflight=100, limits__max_held_bytes=BUDGET,
                        intake__visibility_timeout_ms=1000)
    recs = wait_results(r, ids, timeout=60)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    assert most_at_once(recs) <= 5, recs
    assert "reclaimed" in daemon.log_text()


class ReadMonitor:
    """Every XREADGROUP the server executes, seen through MONITOR as an
    operator would: (time, COUNT asked for)."""

    def __init__(self, port):
        import redis as redis_py
        self.reads = []
        self.seen = 0
        self.conn = redis_py.Redis(port=port, decode_responses=True)
        threading.Thread(target=self.run, daemon=True).start()
        wait_for(lambda: self.seen, what="MONITOR to see the daemon's commands")

    def run(self):
        try:
            with self.conn.monitor() as m:
                for cmd in m.listen():
                    self.seen += 1
                    words = cmd["command"].split()
                    if words and words[0].upper() == "XREADGROUP" and "COUNT" in words:
                        self.reads.append(int(words[words.index("COUNT") + 1]))
        except Exception:       # the server went away in teardown
            pass


def test_small_envelopes_after_big_ones_are_read_in_full_batches_again(r, start_jobd):
    # Reads are planned with the largest recent envelope size, eased down by
    # 1/16 with every smaller one. After a run of ~50 KB envelopes a read asks
    # for 4 (the budget over 50 KB); a run of small ones that follows must
    # bring that estimate down, so reads grow back to intake.batch (100)
    # instead of taking 400 tiny jobs 4 at a time.
    start_jobd(limits__max_held_bytes=BUDGET)
    mon = ReadMonitor(r.connection_pool.connection_kwargs["port"])
    big = [f"big{i}" for i in range(6)]
    for i in big:
        submit(r, padded({"id": i, "type": "sleep", "ms": 1}))
    recs = wait_results(r, big, timeout=20)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    time.sleep(0.2)     # the reads of the big run are all seen
    mark = len(mon.reads)
    small = [f"small{i}" for i in range(400)]
    with r.pipeline(transaction=True) as pipe:      # all 400 on the stream at once
        for i in small:
            pipe.xadd(f"{NS}:queue", {"job": json.dumps({"id": i, "type": "sleep", "ms": 1})})
        pipe.execute()
    recs = wait_results(r, small, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    reads = mon.reads[mark:]
    # The estimate of the big run was in force at first (the read already
    # waiting took 4; the next ones, a few small envelopes later, a few more)...
    assert reads and reads[0] <= 8, reads
    # ...and eased down: full batches again, so few reads for 400 jobs
    # (each read's small envelopes ease it; ~9 reads, plus the empty
    # 1 s blocking reads while the results are awaited).
    assert max(reads) == 100, reads
    assert len(reads) <= 40, reads


def test_sighup_lowering_the_budget_holds_fewer(r, start_jobd):
    # Ten ~50 KB envelopes fit the first budget; after a reload to BUDGET
    # (four of them), the jobs taken from then on run at most about four at
    # a time, and everything still runs.
    first = [f"low{i}" for i in range(12)]
    rest = [f"low{i}" for i in range(12, 24)]
    with r.pipeline(transaction=True) as pipe:
        for i in first:     # long enough to still run when the reload lands
            pipe.xadd(f"{NS}:queue", {"job": padded({"id": i, "type": "sleep", "ms": 2500})})
        for i in rest:
            pipe.xadd(f"{NS}:queue", {"job": padded({"id": i, "type": "sleep", "ms": 800})})
        pipe.execute()
    port = free_port()
    daemon = start_jobd(limits__max_inflight=100, limits__max_held_bytes=10 * PAD,
                        admin__listen=f"127.0.0.1:{port}")
    wait_for(lambda: metrics(port)["jobd_held_bytes"] >= 10 * PAD, what="the first budget reached")
    assert metrics(port)["jobd_jobs_running"] >= 9
    daemon.settings["limits"]["max_held_bytes"] = BUDGET
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    reloaded_ms = time.time() * 1000
    assert metrics(port)["jobd_max_held_bytes"] == BUDGET
    recs = wait_results(r, first + rest, timeout=40)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    # Sanity: the first budget was used, and jobs started after the reload.
    assert most_at_once(recs) >= 9, recs
    later = [rec for rec in recs.values() if rec["started_at"] > reloaded_ms]
    assert len(later) >= 12, recs
    # When each of those started, everything running (the rest of the first
    # run included) was within the new budget, overshot by one read at most.
    spans = [(rec["started_at"], rec["finished_at"]) for rec in recs.values()]
    at_once = max(sum(1 for s, f in spans if s <= rec["started_at"] < f) for rec in later)
    assert at_once <= 5, recs
    snapshot = lambda: json.loads(r.get(daemon.worker_key()) or "{}").get("jobs", {})
    wait_for(lambda: snapshot().get("max_held_bytes") == BUDGET, timeout=8,
             what="max_held_bytes in the worker key")
    assert metrics(port)["jobd_held_bytes"] == 0


def test_a_group_is_charged_what_its_children_take(r, start_jobd):
    # A group of 1,000 tiny children is 27 kB of envelope, but each child is
    # a job of its own in memory (~1.1 kB). Charged only its envelope, a big
    # group went past limits.max_held_bytes about 90 times over, unseen.
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    group = {"id": "g", "type": "group", "mode": "all",
             "jobs": [{"type": "sleep", "ms": 1500}] * 1000}
    envelope = len(json.dumps(group))
    submit(r, group)

    def held():
        return parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])["jobd_held_bytes"]

    wait_for(lambda: held() > envelope, what="the group taken")
    assert held() >= 1000 * 1000, (held(), envelope)
    assert wait_result(r, "g", timeout=30)["status"] == "succeeded"
    wait_for(lambda: held() == 0, what="everything released")


def silent_http_port():
    """A loopback port that takes connections (into its backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def http_batch(job_id, port, n, timeout_ms):
    return {"id": job_id, "type": "http", "urls": [f"http://127.0.0.1:{port}/i"] * n,
            "concurrency": 1, "timeout_ms": timeout_ms}


def test_an_http_batch_is_charged_what_its_requests_take(r, start_jobd):
    # A batch URL is ~30 bytes of envelope and ~600 bytes once parsed (its
    # request, its parsed URL). Charged its envelope only, a hostile
    # producer's batches went far past the budget: 200 of 20,000 URLs held
    # 4.5 GB under a 256 MiB budget. Here 24 of 5,000 (~160 kB each, ~3 MB
    # parsed) and a 16 MiB budget: all 24 were taken at once.
    silent = silent_http_port()
    try:
        ids = [f"batch{i}" for i in range(24)]
        for i in ids:
            submit(r, http_batch(i, silent.getsockname()[1], 5000, 1500))
        port = free_port()
        budget = 16 << 20
        daemon = start_jobd(http__allow_private=True, limits__max_held_bytes=budget,
                            admin__listen=f"127.0.0.1:{port}")
        hwm_before = vm_hwm(daemon.proc.pid)
        recs, sampler = results_sampled(r, ids, port, timeout=60)
        assert all(rec["status"] == "timed_out" for rec in recs.values()), recs
        assert max(sampler.running) <= 7, sampler.running
        assert max(sampler.held) <= budget + (4 << 20), max(sampler.held)
        if not SANITIZERS:      # ASan's redzones and quarantine inflate RSS past any bound
            assert vm_hwm(daemon.proc.pid) - hwm_before < 3 * budget
        assert metrics(port)["jobd_held_bytes"] == 0
    finally:
        silent.close()


def test_big_batches_are_parsed_a_few_at_a_time_not_all_in_one_loop_pass(r, start_jobd):
    # Every entry of a read is parsed in one loop pass, and 20,000 batch URLs
    # take ~70 ms to parse: a read of a hundred held the loop for 7 s. Reads
    # now bring about 4 MiB of parsed jobs at a time, so a job that arrives
    # meanwhile waits for one read's parsing, not for the whole backlog's.
    silent = silent_http_port()
    try:
        daemon = start_jobd(http__allow_private=True, limits__max_held_bytes=4 << 30)
        with r.pipeline(transaction=False) as pipe:
            for i in range(50):
                pipe.xadd(f"{NS}:queue", {"job": json.dumps(
                    http_batch(f"flood{i}", silent.getsockname()[1], 20000, 60000))})
            pipe.execute()
        wait_for(lambda: "job flood0: attempt 1 of 1 started" in daemon.log_text(),
                 what="the first batch to start")
        worst = 0.0
        for k in range(5):
            t0 = time.monotonic()
            assert publish(r, {"id": f"probe{k}", "type": "sleep", "ms": 1}) == 1
            wait_result(r, f"probe{k}", timeout=30)
            worst = max(worst, time.monotonic() - t0)
        # 50 x 70 ms (3.5 s) if parsed in one pass; one read's worth now.
        assert worst < 1.5, worst
    finally:
        silent.close()


def numsub(r, channel):
    return dict(r.pubsub_numsub(channel))[channel]


OOM_BUDGET, OOM_SIZE = 64 * 1024, 8 * 1024


def publish_into_oom(r, start_jobd, count=200):
    """A daemon whose two slots run 1.5 s sleeps, then a Redis out of memory
    (noeviction: every XADD refused) and COUNT ~8 kB jobs published 5 ms
    apart. Returns (daemon, admin port, slot ids, ids whose PUBLISH counted
    a receiver, ids whose PUBLISH said 0, max jobd_held_bytes seen); Redis
    is left out of memory."""
    port = free_port()
    daemon = start_jobd(limits__max_inflight=2, limits__max_held_bytes=OOM_BUDGET,
                        admin__listen=f"127.0.0.1:{port}")
    slots = ["slot0", "slot1"]
    for i in slots:
        assert publish(r, {"id": i, "type": "sleep", "ms": 1500}) == 1
    wait_for(lambda: metrics(port)["jobd_jobs_running"] == 2, what="both slots taken")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    taken, refused = [], []
    sampler = Sampler(port)
    try:
        for n in range(count):
            job_id = f"oom{n}"
            receivers = publish(r, padded({"id": job_id, "type": "sleep", "ms": 1}, OOM_SIZE))
            (taken if receivers else refused).append(job_id)
            time.sleep(0.005)
    finally:
        sampler.stop()
    return daemon, port, slots, taken, refused, max(sampler.held)


def test_pubsub_jobs_redis_will_not_park_pause_the_job_channels(r, start_jobd):
    # Redis out of memory (noeviction) refuses the XADD that parks a pub/sub
    # job that finds jobd full. The job was taken (its PUBLISH counted this
    # daemon), so jobd holds it; held that way, every message past
    # limits.max_held_bytes was held too (a reviewer saw 10x the budget).
    # Past the budget jobd now leaves its job channels, so PUBLISH says 0 and
    # the producer knows nobody took the job, and joins them again once the
    # held bytes are back under the budget.
    try:
        daemon, port, slots, taken, refused, held = publish_into_oom(r, start_jobd)
        # Held: what reached the budget, and what was on its way while the
        # UNSUBSCRIBE was (a few messages), not all 200 (1.6 MB).
        assert refused, "every PUBLISH counted jobd: nothing told producers it was full"
        assert held <= OOM_BUDGET + 8 * OOM_SIZE, held
        assert len(taken) <= OOM_BUDGET // OOM_SIZE + 8, len(taken)
        # Once off, the channels stay off while the held bytes cannot go down
        # (their outcomes too wait for Redis to take writes).
        assert refused == [f"oom{n}" for n in range(len(taken), 200)], (taken, refused)
        assert metrics(port)["jobd_pubsub_paused"] == 1
        # NS:control stays: a cancel is still heard.
        assert numsub(r, f"{NS}:control") == 1 and numsub(r, f"{NS}:jobs") == 0
        # A new subscriber connection (Redis dropped it) joins the job
        # channels only once the condition clears.
        r.client_kill_filter(_type="pubsub")
        wait_for(lambda: daemon.log_text().count("redis subscriber connection ready") >= 2,
                 what="the subscriber to reconnect")
        wait_for(lambda: numsub(r, f"{NS}:control") == 1, what="NS:control subscribed again")
        time.sleep(0.3)
        assert numsub(r, f"{NS}:jobs") == 0
        assert publish(r, {"id": "refused-late", "type": "sleep", "ms": 1}) == 0
    finally:
        r.config_set("maxmemory", 0)
    # Memory freed: every job whose PUBLISH counted jobd runs.
    recs = wait_results(r, slots + taken, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    assert all(result(r, i) is None for i in refused + ["refused-late"])
    # ...and the job channels are joined again.
    wait_for(lambda: metrics(port)["jobd_pubsub_paused"] == 0, what="the job channels back")
    wait_for(lambda: numsub(r, f"{NS}:jobs") == 1, what="NS:jobs subscribed again")
    assert publish(r, {"id": "after", "type": "sleep", "ms": 1}) == 1
    assert wait_result(r, "after")["status"] == "succeeded"
    log = daemon.log_text()
    assert log.count("pub/sub job channels paused") == 1, log
    assert log.count("pub/sub job channels resumed") == 1, log


def test_a_drain_while_the_job_channels_are_paused_loses_nothing(r, start_jobd):
    # SIGTERM while paused: the held jobs go back on the stream once Redis
    # takes writes (the job channels stay left for the rest of the drain,
    # since no park shows that Redis takes them again, and the drain's final
    # UNSUBSCRIBEs are confirmed as before), nothing published to a left
    # channel is taken, and the daemon exits 0.
    try:
        daemon, port, slots, taken, refused, _ = publish_into_oom(r, start_jobd, count=40)
        assert refused and metrics(port)["jobd_pubsub_paused"] == 1
        daemon.signal(signal.SIGTERM)
        time.sleep(0.5)
    finally:
        r.config_set("maxmemory", 0)
    assert daemon.proc.wait(20) == 0, daemon.log_text()
    queued = {json.loads(f["job"])["id"] for _, f in r.xrange(f"{NS}:queue")}
    done = {i for i in slots + taken if result(r, i)}
    assert set(slots + taken) <= queued | done, (slots + taken, queued, done)
    assert not (set(refused) & (queued | done))
    log = daemon.log_text()
    assert "giving up" not in log and "lost at exit" not in log, log


@pytest.mark.parametrize("redis_back", ["before the drain", "after its deadline"])
def test_a_drain_that_ends_with_the_job_channels_paused_loses_nothing(r, start_jobd, redis_back):
    # The test above frees Redis at once, so the held jobs go back on the
    # stream and the held bytes fall under the budget well before the drain's
    # final UNSUBSCRIBE. Here the budget
    # stays spent until the drain's end: the two slots run jobs longer than
    # shutdown.drain_ms whose envelopes alone reach limits.max_held_bytes, and
    # Redis refuses writes either only before the drain or through its
    # deadline too. The channels stay left for the whole drain (a PUBLISH
    # then counts nobody), the daemon exits 0, and every job whose PUBLISH
    # counted it has a record or is on the stream for the next daemon.
    port = free_port()
    daemon = start_jobd(limits__max_inflight=2, limits__max_held_bytes=OOM_BUDGET,
                        shutdown__drain_ms=1500, admin__listen=f"127.0.0.1:{port}")
    slots = ["long0", "long1"]
    for i in slots:     # each just over half the budget: together they reach it
        text = padded({"id": i, "type": "sleep", "ms": 60000}, OOM_BUDGET // 2 + 1024)
        assert publish(r, text) == 1
    wait_for(lambda: metrics(port)["jobd_jobs_running"] == 2, what="both slots taken")
    assert metrics(port)["jobd_held_bytes"] >= OOM_BUDGET
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    taken, refused = [], []
    try:
        for n in range(40):
            job_id = f"oom{n}"
            receivers = publish(r, padded({"id": job_id, "type": "sleep", "ms": 1}, OOM_SIZE))
            (taken if receivers else refused).append(job_id)
            time.sleep(0.005)
        assert taken and refused, (taken, refused)
        assert metrics(port)["jobd_pubsub_paused"] == 1
        if redis_back == "before the drain":
            r.config_set("maxmemory", 0)
            time.sleep(0.3)     # nothing is parked now: the channels stay left
            assert metrics(port)["jobd_pubsub_paused"] == 1
        daemon.signal(signal.SIGTERM)
        time.sleep(0.5)
        # Draining, the budget still spent: still left.
        assert publish(r, {"id": "in-drain", "type": "sleep", "ms": 1}) == 0
        if redis_back == "after its deadline":
            wait_for(lambda: "shutdown: stopping" in daemon.log_text(), timeout=5,
                     what="the drain's deadline")
            time.sleep(1.5)     # the stopped jobs' put-backs refused, and tried again
    finally:
        r.config_set("maxmemory", 0)
    assert daemon.proc.wait(20) == 0, daemon.log_text()
    log = daemon.log_text()
    # The channels were left until the drain stopped the slots' jobs.
    stopping = log.index("shutdown: stopping")
    assert "pub/sub job channels resumed" not in log[:stopping], log
    queued = {json.loads(f["job"])["id"] for _, f in r.xrange(f"{NS}:queue")}
    done = {i for i in slots + taken if result(r, i)}
    assert set(slots + taken) <= queued | done, (slots + taken, queued, done)
    assert not (set(refused + ["in-drain"]) & (queued | done))
    for said in ("giving up", "lost at exit", "is lost"):
        assert said not in log, log


def test_a_park_refused_long_ago_does_not_pause_the_job_channels_later(r, start_jobd):
    # One park Redis refused (out of memory for a moment) left the daemon
    # believing parking fails: nothing but another park cleared that, and
    # parks stop once the channels are left. So, long after Redis took
    # writes again, the first job to end while the held bytes were still at
    # the budget paused the job channels, and producers were told nobody
    # took jobs that parking would have kept.
    port = free_port()
    daemon = start_jobd(limits__max_inflight=3, limits__max_held_bytes=OOM_BUDGET,
                        admin__listen=f"127.0.0.1:{port}")
    slots = [f"slot{i}" for i in range(3)]
    for i in slots:
        assert publish(r, {"id": i, "type": "sleep", "ms": 800}) == 1
    wait_for(lambda: metrics(port)["jobd_jobs_running"] == 3, what="every slot taken")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        assert publish(r, {"id": "held", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: "parking a pub/sub job on the stream failed" in daemon.log_text(),
                 what="the park refused")
    finally:
        r.config_set("maxmemory", 0)
    recs = wait_results(r, slots + ["held"], timeout=15)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    wait_for(lambda: metrics(port)["jobd_held_bytes"] == 0, what="everything released")
    # Redis takes writes. Two big jobs hold more than the budget between
    # them; a small one ends beside them. From the stream, in one read (one
    # transaction adds them): nothing is parked meanwhile.
    with r.pipeline(transaction=True) as pipe:
        submit(pipe, {"id": "small", "type": "sleep", "ms": 200})
        for i in ("big0", "big1"):
            submit(pipe, padded({"id": i, "type": "sleep", "ms": 3000}, 40 * 1024))
        pipe.execute()
    wait_for(lambda: metrics(port)["jobd_held_bytes"] >= OOM_BUDGET, what="the bytes held")
    assert wait_result(r, "small")["status"] == "succeeded"
    time.sleep(0.2)
    # Full by bytes: a job published now is parked on the stream, as it
    # would be had no park ever failed.
    assert metrics(port)["jobd_pubsub_paused"] == 0
    assert "pub/sub job channels paused" not in daemon.log_text()
    assert publish(r, {"id": "late", "type": "sleep", "ms": 1}) == 1
    assert wait_result(r, "late", timeout=15)["status"] == "succeeded"


@pytest.mark.parametrize("held", ["at the budget", "under it"])
def test_a_drain_whose_parks_are_refused_keeps_the_job_channels_left(r, start_jobd, held):
    # Draining, every pub/sub job is parked on the stream, not run; a job
    # whose park Redis refused is held for a put-back that Redis refuses as
    # well. The job channels were left only while the held bytes reached
    # limits.max_held_bytes, and joined again as soon as a job's end took
    # them under it, parks still refused: what was heard then was taken,
    # held, and lost when the drain gave up (exit 1). Here the ACL user may
    # not XADD (records are still written, so the held bytes do go down as
    # the slots' jobs end mid-drain). A draining daemon now leaves its job
    # channels at the first refused park, at the budget or under it, until
    # it exits: a PUBLISH counts nobody, and the producer can retry
    # elsewhere. NS:control stays subscribed.
    acl = ["ACL", "SETUSER", "parker"]
    r.execute_command(*acl, "on", ">pw", "~*", "&*", "+@all")
    port = free_port()
    daemon = start_jobd(redis__username="parker", redis__password="pw",
                        limits__max_inflight=2, limits__max_held_bytes=OOM_BUDGET,
                        shutdown__drain_ms=15000, admin__listen=f"127.0.0.1:{port}")
    slots = ["slot0", "slot1"]
    size = OOM_BUDGET // 2 + 1024 if held == "at the budget" else 0
    for i in slots:     # at the budget: together they reach it; both end mid-drain
        submit(r, padded({"id": i, "type": "sleep", "ms": 2000}, size))
    wait_for(lambda: metrics(port)["jobd_jobs_running"] == 2, what="both slots taken")
    assert (metrics(port)["jobd_held_bytes"] >= OOM_BUDGET) == (held == "at the budget")
    r.execute_command(*acl, "-xadd")
    try:
        # The held job's put-back is tried again every second, and the slots'
        # outcomes, written in the same MULTI, would be aborted with it (the
        # XADD refused as it is queued): half a second apart, they are not.
        time.sleep(0.5)
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in daemon.log_text(), what="the drain")
        assert publish(r, {"id": "held", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: "parking a pub/sub job on the stream failed: NOPERM" in daemon.log_text(),
                 what="the refused park")
        wait_for(lambda: metrics(port)["jobd_pubsub_paused"] == 1, timeout=3,
                 what="the job channels left")
        assert publish(r, {"id": "in-drain", "type": "sleep", "ms": 1}) == 0
        # The slots' jobs end and their records are written: the held bytes
        # fall under the budget, parks still refused.
        recs = wait_results(r, slots, timeout=10)
        assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
        wait_for(lambda: metrics(port)["jobd_held_bytes"] < OOM_BUDGET, what="bytes released")
        time.sleep(0.3)
        assert publish(r, {"id": "late", "type": "sleep", "ms": 1}) == 0
        assert metrics(port)["jobd_pubsub_paused"] == 1
        assert numsub(r, f"{NS}:jobs") == 0 and numsub(r, f"{NS}:control") == 1
        # A subscriber connection made now joins NS:control only, and says so.
        r.client_kill_filter(_type="pubsub")
        wait_for(lambda: "redis subscriber back during the drain: its job channels stay left"
                 in daemon.log_text(), what="the subscriber back")
        wait_for(lambda: numsub(r, f"{NS}:control") == 1, what="NS:control subscribed again")
        assert numsub(r, f"{NS}:jobs") == 0
        assert publish(r, {"id": "later", "type": "sleep", "ms": 1}) == 0
    finally:
        r.execute_command(*acl, "+xadd")
    # XADD allowed again: the one job taken goes back on the stream, once.
    assert daemon.proc.wait(20) == 0, daemon.log_text()
    queued = [json.loads(f["job"]).get("id") for _, f in r.xrange(f"{NS}:queue")]
    assert queued.count("held") == 1, queued
    assert result(r, "held") is None
    for i in ("in-drain", "late", "later"):
        assert i not in queued and result(r, i) is None
    log = daemon.log_text()
    assert "paused for the rest of the drain" in log, log
    assert "pub/sub job channels resumed" not in log, log
    for said in ("giving up", "lost at exit", "is lost"):
        assert said not in log, log


# ---- stream entries too long to be jobs --------------------------------------

MB = 1 << 20
HUGE = 40 * MB          # each entry; four of them are 160 MB


def vm_hwm(pid):
    """The peak resident memory of process PID so far, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def add_huge(r, count):
    """COUNT entries of HUGE bytes each, pipelined as a hostile producer would."""
    text = padded({"id": "huge", "type": "sleep", "ms": 1}, HUGE)
    with r.pipeline(transaction=False) as pipe:
        for _ in range(count):
            pipe.xadd(f"{NS}:queue", {"job": text})
        pipe.execute()


def check_dropped(r, daemon, count, hwm_before, size=HUGE, says=None, most=None):
    """Each of COUNT huge entries (of SIZE bytes) ended too_large, its error
    saying SAYS (by default, its size), without jobd's peak memory growing by
    MOST (a quarter of one): dead-lettered without its bytes (truncated),
    acknowledged; and a job after them runs."""
    dead = wait_for(lambda: len(dead_entries(r)) == count and dead_entries(r),
                    timeout=30, what=f"{count} dead letters")
    grown = vm_hwm(daemon.proc.pid) - hwm_before
    assert grown < (size // 4 if most is None else most), \
        f"peak memory grew by {grown / MB:.0f} MB"
    for letter in dead:
        err = json.loads(letter["error"])
        assert err["code"] == "too_large", letter
        assert (says or f"envelope is {size} bytes") in err["message"], err
        assert letter["job"] == "" and letter["truncated"] == "1", letter
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="XACK")
    assert daemon.log_text().count("rejected a stream message: too_large") == count
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_result(r, "after")["status"] == "succeeded"


def test_stream_entries_too_long_to_be_jobs_are_never_held_whole(r, start_jobd):
    # hiredis read each entry whole before it was refused: 160 MB of them
    # took jobd's peak memory up by about that, and 50 of Redis's largest
    # (512 MB) got it OOM-killed, again after every restart.
    daemon = start_jobd(limits__max_job_bytes=64 * 1024, limits__max_held_bytes=MB)
    before = vm_hwm(daemon.proc.pid)
    add_huge(r, 4)
    check_dropped(r, daemon, 4, before)


FIELDS = 200000     # an entry's: "job" and 199,999 one-byte others


def test_stream_entries_with_too_many_fields_are_never_held_whole(r, start_jobd):
    # No bulk string of these is long, but hiredis made a reply object of
    # each name and value (about 80 bytes): four of them in one read took
    # jobd's peak memory up by some 130 MB (20 of Redis's million arguments:
    # 1.6 GB). Now each entry's fields are skipped as they come.
    daemon = start_jobd()
    before = vm_hwm(daemon.proc.pid)
    args = ["job", json.dumps({"type": "sleep", "ms": 1})]
    for i in range(FIELDS - 1):
        args += [f"f{i}", "v"]
    with r.pipeline(transaction=True) as pipe:      # all there for one read
        for k in range(4):
            pipe.execute_command("XADD", f"{NS}:queue", "*", *args)
            if k == 1:
                pipe.xadd(f"{NS}:queue",
                          {"job": json.dumps({"id": "among", "type": "sleep", "ms": 1})})
        pipe.execute()
    # The job among them came in the same read: once it ran, all were read.
    assert wait_result(r, "among")["status"] == "succeeded"
    grown = vm_hwm(daemon.proc.pid) - before
    assert grown < 16 * MB, f"peak memory grew by {grown / MB:.0f} MB"
    check_dropped(r, daemon, 4, before, says=f"stream entry has {FIELDS} fields, more than "
                  "the 128 jobd reads", most=16 * MB)


def test_reclaimed_entries_too_long_to_be_jobs_are_never_held_whole(r, start_jobd):
    # XCLAIM brings them on the command connection: filtered there too.
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    add_huge(r, 2)
    r.execute_command("XREADGROUP", "GROUP", "jobd", "dead-consumer", "COUNT", "2",
                      "STREAMS", f"{NS}:queue", ">")
    daemon = start_jobd(limits__max_job_bytes=64 * 1024, limits__max_held_bytes=MB,
                        intake__visibility_timeout_ms=1000)
    check_dropped(r, daemon, 2, vm_hwm(daemon.proc.pid))
    assert "reclaimed" in daemon.log_text()


def test_reclaimed_entries_with_too_many_fields_are_never_held_whole(r, start_jobd):
    # An entry read whole by a daemon that died before it could refuse it is
    # reclaimed through XCLAIM on the command connection, where hiredis held
    # all its fields (about 80 bytes each: some 30 MB for two of these).
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    args = ["job", json.dumps({"type": "sleep", "ms": 1})]
    for i in range(FIELDS - 1):
        args += [f"f{i}", "v"]
    for _ in range(2):
        r.execute_command("XADD", f"{NS}:queue", "*", *args)
    r.execute_command("XREADGROUP", "GROUP", "jobd", "dead-consumer", "COUNT", "2",
                      "STREAMS", f"{NS}:queue", ">")
    daemon = start_jobd(intake__visibility_timeout_ms=1000)
    check_dropped(r, daemon, 2, vm_hwm(daemon.proc.pid), says=f"stream entry has {FIELDS} "
                  "fields, more than the 128 jobd reads", most=8 * MB)
    assert "reclaimed" in daemon.log_text()


class SlowLink(ForwardingProxy):
    """Redis at RATE bytes/s towards jobd, in chunks of at most 64 kB."""

    def __init__(self, redis_port, rate):
        self.rate = rate
        super().__init__(redis_port)

    def forward(self, data, src, dst, state, upstream):
        if not upstream:
            time.sleep(len(data) / self.rate)
        dst.sendall(data)
        return True


def test_a_reply_that_takes_longer_to_come_than_a_read_may_wait_is_waited_for(
        r, redis_server, start_jobd):
    # 12 MB at 1.5 MB/s: 8 s, more than the stream read's 6 s. It was cut
    # as a read that timed out, and read again (the same way) only when
    # reclaimed after the visibility timeout: bytes coming are no silence.
    # The field after "job" makes the reply end only after its bytes.
    proxy = SlowLink(redis_server.port, 1.5 * MB)
    try:
        big = padded({"type": "sleep", "ms": 1}, 12 * MB)
        r.xadd(f"{NS}:queue", {"job": big, "id": "slow"})
        daemon = start_jobd(redis__port=proxy.port, limits__max_job_bytes=64 * 1024)
        rec = wait_result(r, "slow", timeout=20)
        assert rec["status"] == "rejected" and rec["error"]["code"] == "too_large", rec
        assert "timed out" not in daemon.log_text()
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="XACK")
        assert json.loads(dead_entries(r)[0]["error"])["code"] == "too_large"
    finally:
        proxy.close()


class CutLink(ForwardingProxy):
    """Closes the first connection that has brought jobd CUT bytes, there:
    in the middle of whatever reply is coming. Every other connection, the
    ones made after it included, is left whole."""

    def __init__(self, redis_port, cut):
        self.cut, self.done = cut, False
        super().__init__(redis_port)

    def new_state(self):
        return {"down": 0}

    def forward(self, data, src, dst, state, upstream):
        if not upstream:
            state["down"] += len(data)
            if state["down"] >= self.cut and not self.done:
                self.done = True
                return False
        dst.sendall(data)
        return True


def test_a_connection_lost_while_an_entry_is_dropped_reads_the_next_afresh(
        r, redis_server, start_jobd):
    # The stream connection is cut 5 MB into a 20 MB entry, while the
    # filter is dropping it. The connection made after it must not inherit
    # that state (it would drop the first 15 MB it is sent: every reply on
    # it lost). The entry, pending in jobd's name, comes back through
    # reclaim on the command connection: too_large and dead-lettered once,
    # and the job queued after it runs once.
    size = 20 * MB
    proxy = CutLink(redis_server.port, 5 * MB)
    try:
        r.xadd(f"{NS}:queue", {"job": padded({"id": "huge", "type": "sleep", "ms": 1}, size)})
        submit(r, {"id": "after", "type": "sleep", "ms": 1})
        daemon = start_jobd(redis__port=proxy.port, limits__max_job_bytes=64 * 1024,
                            limits__max_held_bytes=MB, intake__visibility_timeout_ms=1000)
        before = vm_hwm(daemon.proc.pid)
        wait_for(lambda: proxy.done, what="the cut")
        wait_for(lambda: daemon.log_text().count("redis stream connection ready") == 2,
                 what="the stream connection back")
        rec = wait_result(r, "after", timeout=15)
        assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
        check_dropped(r, daemon, 1, before, size)
        log = daemon.log_text()
        assert "redis stream connection lost" in log, log
        assert "redis command connection lost" not in log, log
        assert daemon.stop() == 0, daemon.log_text()   # alive, and a clean exit
        assert len(dead_entries(r)) == 1
    finally:
        proxy.close()


class SplitLink(ForwardingProxy):
    """Sends Redis's replies on to jobd split where told: the i-th time a
    pattern of CUTS ({bytes: [offset, ...]}) comes, it is sent in two
    writes 0.1 s apart, the first ending offsets[i] bytes into it, so jobd
    reads the two parts apart. A reply's last bytes that may begin a
    pattern wait for the next chunk (a reply ends with LF, which a pattern
    has only at its end, so no reply is held back whole)."""

    def __init__(self, redis_port, cuts):
        self.cuts = {p: list(o) for p, o in cuts.items()}
        super().__init__(redis_port)

    def new_state(self):
        return {"held": b""}

    def forward(self, data, src, dst, state, upstream):
        if upstream:
            dst.sendall(data)
            return True
        buf = state["held"] + data
        while True:
            hits = sorted((buf.find(p), p) for p, o in self.cuts.items() if o and p in buf)
            if not hits:
                break
            at, p = hits[0]
            at += self.cuts[p].pop(0)
            dst.sendall(buf[:at])
            time.sleep(0.1)
            buf = buf[at:]
        keep = max([k for p, o in self.cuts.items() if o
                    for k in range(1, min(len(p), len(buf) + 1)) if buf.endswith(p[:k])],
                   default=0)
        state["held"] = buf[len(buf) - keep:]
        if len(buf) > keep:
            dst.sendall(buf[:len(buf) - keep])
        return True


def test_bulk_headers_split_across_reads_and_the_drop_boundary(r, redis_server, start_jobd):
    # The RESP filter reads the socket 64 kB at a time, so any read may end
    # inside a bulk header ("$131073\r\n"), where the filter holds the part
    # it has until the rest comes. Here every header of a job value is
    # split at each of its bytes, for a job (3000 bytes), an entry of
    # exactly max_job_bytes + 64 KiB (the most the filter passes whole:
    # read, and too_large with its first bytes kept) and one a byte over
    # (dropped as it comes: too_large, nothing kept).
    limit = 64 * 1024
    kept, dropped = 2 * limit, 2 * limit + 1
    heads = {n: b"$%d\r\n" % n for n in (3000, kept, dropped)}
    proxy = SplitLink(redis_server.port,
                      {h: range(1, len(h)) for h in heads.values()})
    try:
        jobs = []
        for k in range(len(heads[kept]) - 1):
            if k < len(heads[3000]) - 1:
                jobs.append(f"n{k}")
                r.xadd(f"{NS}:queue", {"job": padded({"id": f"n{k}", "type": "sleep", "ms": 1},
                                                     3000)})
            for size in (kept, dropped):
                r.xadd(f"{NS}:queue", {"job": padded({"id": f"big{k}", "type": "sleep", "ms": 1},
                                                     size)})
        daemon = start_jobd(redis__port=proxy.port, limits__max_job_bytes=limit)
        recs = wait_results(r, jobs)
        assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
        dead = wait_for(lambda: len(dead_entries(r)) == 16 and dead_entries(r),
                        what="16 dead letters")
        assert all(not o for o in proxy.cuts.values()), proxy.cuts   # every split was made
        for size in (kept, dropped):
            letters = [d for d in dead if f"envelope is {size} bytes" in d["error"]]
            assert len(letters) == 8, dead
            for letter in letters:
                assert json.loads(letter["error"])["code"] == "too_large", letter
                assert letter["truncated"] == "1", letter
                assert len(letter["job"]) == (limit if size == kept else 0), len(letter["job"])
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="XACK")
        assert daemon.stop() == 0, daemon.log_text()
        assert "connection lost" not in daemon.log_text(), daemon.log_text()
    finally:
        proxy.close()


class GarbageLink(ForwardingProxy):
    """Answers the first command that starts with COMMAND with GARBAGE
    instead of Redis's reply (which, and all after it on that connection,
    is then never sent): what something other than Redis on the port, or a
    broken proxy, could send."""

    def __init__(self, redis_port, command, garbage):
        self.command, self.garbage, self.done = command, garbage, False
        super().__init__(redis_port)

    def new_state(self):
        return {"mute": False, "lock": threading.Lock()}

    def forward(self, data, src, dst, state, upstream):
        with state["lock"]:         # the garbage is not cut into a reply
            if state["mute"]:
                return True
            if upstream and b"\r\n%s\r\n" % self.command in data and not self.done:
                self.done = state["mute"] = True
                src.sendall(self.garbage)
                return True
            dst.sendall(data)
            return True


@pytest.mark.parametrize("command,role,garbage,said", [
    (b"XREADGROUP", "stream", b"-ERR " + b"x" * (20 * MB), "a reply line longer than 64 KiB"),
    (b"XREADGROUP", "stream", b"*1\r\n$12x" + b"x" * (20 * MB),
     "a bulk string header that is not a length"),
    (b"XREADGROUP", "stream", b"*1\r\n*12x" + b"x" * (20 * MB),
     "an array header that is not a count"),
    (b"EVAL", "command", b"-ERR " + b"x" * (20 * MB), "a reply line longer than 64 KiB")],
    ids=["error-line", "bulk-header", "array-header", "command-error-line"])
def test_a_reply_the_filter_cannot_follow_drops_the_connection(
        r, redis_server, start_jobd, command, role, garbage, said):
    # 20 MB with no CRLF, after an error's "-" or a bulk header that is no
    # length (or, on the stream connection, whose arrays are counted, an
    # array header that is no count), on the stream connection (XREADGROUP) or the command one (the
    # scheduler's EVAL, every 100 ms). hiredis holds a line until its CRLF,
    # so jobd held all of it (the filter passed the header on, and
    # everything after it), and then waited for the rest until the read
    # timed out. Now the connection is dropped once 64 KiB of the line or
    # the header went by, with the reason, and the next one works.
    proxy = GarbageLink(redis_server.port, command, garbage)
    try:
        daemon = start_jobd(redis__port=proxy.port, limits__max_job_bytes=64 * 1024)
        before = vm_hwm(daemon.proc.pid)
        wait_for(lambda: daemon.log_text().count(f"redis {role} connection ready") == 2,
                 what=f"the {role} connection back")
        grown = vm_hwm(daemon.proc.pid) - before
        assert grown < 4 * MB, f"peak memory grew by {grown / MB:.0f} MB"
        assert f"redis {role} connection lost: RESP filter: {said}" in daemon.log_text()
        submit(r, {"id": "after", "type": "sleep", "ms": 1})
        assert wait_result(r, "after")["status"] == "succeeded"
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        proxy.close()
