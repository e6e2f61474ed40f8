"""PROTOCOL §6: SIGTERM drains, puts back what is left, loses nothing."""
import json
import signal
import threading
import time

import pytest

from conftest import NS, Ledger, publish, result, submit, wait_for, wait_result, wait_results
from redis_proxy import ForwardingProxy
from test_files import slow_read_env
from test_redis_outage import copies_of, draining_with_a_long_job, live_copies, log_times


def test_sigterm_under_load_loses_nothing(r, start_jobd):
    ledger = Ledger(r)
    ids = [f"L{i}" for i in range(200)]
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": 200})
    first = start_jobd(limits__max_inflight=20, shutdown__drain_ms=1000)
    wait_for(lambda: len(r.keys(f"{NS}:result:*")) >= 20, what="some results")
    assert first.stop() == 0
    # Nothing it took is left pending: finished, or back on the stream.
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0
    start_jobd(name="second", limits__max_inflight=50)
    recs = wait_results(r, ids, timeout=30)
    lost, duplicated = ledger.report(ids)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    assert lost == [] and duplicated == {}


def test_drain_timeout_puts_long_jobs_back(r, start_jobd):
    ids = [f"long{i}" for i in range(5)]
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": 3000})
    daemon = start_jobd(shutdown__drain_ms=200)
    wait_for(lambda: "attempt 1 of 1 started" in daemon.log_text()
             and daemon.log_text().count("started (sleep)") == 5, what="5 running jobs")
    t0 = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - t0 < 2.0
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0
    assert r.keys(f"{NS}:result:*") == []
    # Requeued entries keep the job's id. (A requeued entry can come back
    # through the read that was blocked when the drain began; it is then put
    # back once more, and the earlier copy is acknowledged.)
    requeued = [f for _, f in r.xrange(f"{NS}:queue") if "attempts" in f]
    assert sorted(set(f["id"] for f in requeued)) == ids
    start_jobd(name="second")
    recs = wait_results(r, ids, timeout=15)
    assert all(rec["status"] == "succeeded" and rec["attempts"] == 1 for rec in recs.values())


def test_second_sigterm_cuts_the_drain_short(r, start_jobd):
    submit(r, {"id": "slow", "type": "sleep", "ms": 10000})
    daemon = start_jobd(shutdown__drain_ms=20000)
    wait_for(lambda: "started (sleep)" in daemon.log_text(), what="the job to start")
    daemon.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert daemon.proc.poll() is None       # still draining
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(5) == 0
    assert time.monotonic() - t0 < 2
    assert "second" in daemon.log_text().lower()
    start_jobd(name="again")
    assert wait_results(r, ["slow"], timeout=15)["slow"]["status"] == "succeeded"


def test_worker_key_is_removed_on_clean_exit(r, start_jobd):
    daemon = start_jobd()
    key = daemon.worker_key()
    snapshot = json.loads(r.get(key))
    assert snapshot["worker"] == key.split(":", 2)[2]
    assert 0 < r.ttl(key) <= 10
    assert daemon.stop() == 0
    assert not r.exists(key)


def test_a_drain_ends_the_blocked_read_at_once(r, start_jobd):
    # The stream read blocks in Redis for up to a second. A drain unblocks
    # it (CLIENT UNBLOCK): an idle daemon exits at once, and a job added
    # after SIGTERM is left undelivered for the next daemon, not taken only
    # to be put back.
    daemon = start_jobd(shutdown__drain_ms=5000)
    time.sleep(0.2)                     # the first read is blocked by now
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: "draining" in daemon.log_text(), what="the drain")
    entry = submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert daemon.proc.wait(20) == 0
    took = time.monotonic() - began
    assert took < 5, f"exit took {took:.2f} s"
    # Judged by the daemon's own clock, from the drain to "stopped": the
    # test's would add signal delivery, log polling, the exit itself and,
    # under ASan, the leak check at exit. A drain that waited for the blocked
    # read would take most of its second.
    text = daemon.log_text()
    drain = log_times(text, " NOTICE stopped")[-1] - log_times(text, ": draining ")[0]
    assert drain < 0.5, f"the drain took {drain:.2f} s"
    group = next(g for g in r.xinfo_groups(f"{NS}:queue") if g["name"] == "jobd")
    assert group["last-delivered-id"] != entry and group["pending"] == 0
    assert r.xlen(f"{NS}:queue") == 1


class SlowDelivery(ForwardingProxy):
    """A TCP proxy in front of Redis that forwards everything, except that
    the first chunk from Redis holding TRIGGER (and whatever follows it on
    that connection) reaches jobd late: once jobd sends anything more on
    that connection, or after HOLD seconds. A slow link, for one message.
    With UPSTREAM, it is the first chunk from jobd holding TRIGGER that
    reaches Redis HOLD seconds late (or never, the proxy closed first)."""

    def __init__(self, redis_port, trigger, hold=5.0, upstream=False):
        self.trigger, self.hold, self.upstream = trigger, hold, upstream
        self.held = threading.Event()
        super().__init__(redis_port)

    def new_state(self):
        return {"spoke": threading.Event()}     # jobd sent something after the hold began

    def forward(self, data, src, dst, state, upstream):
        if upstream and self.held.is_set():
            state["spoke"].set()
        if upstream == self.upstream and not self.held.is_set() and self.trigger in data:
            self.held.set()
            state["spoke"].wait(self.hold)
        dst.sendall(data)
        return True


def test_a_pubsub_job_still_on_the_wire_at_sigterm_is_not_lost(r, redis_server, start_jobd):
    # The producer's PUBLISH returns 1: Redis handed the job to this daemon's
    # subscription. The message is still on its way (a slow link; under a
    # steady stream of PUBLISHes, simply the last ones before the exit) when
    # SIGTERM comes. A drain that loses nothing must read it (e.g. UNSUBSCRIBE
    # and read up to the confirmation) and park it on the stream.
    proxy = SlowDelivery(redis_server.port, trigger=b"on-the-wire")
    try:
        daemon = start_jobd(redis__port=proxy.port, shutdown__drain_ms=5000)
        assert publish(r, {"id": "on-the-wire", "type": "sleep", "ms": 1}) == 1
        wait_for(proxy.held.is_set, what="the message held on its way")
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
        assert result(r, "on-the-wire") is not None or copies_of(r, "on-the-wire") == 1, \
            daemon.log_text()
    finally:
        proxy.close()


def test_a_park_unanswered_during_the_drain_is_put_back_not_lost(r, redis_server, start_jobd):
    # A pub/sub job arrives during the drain and is parked with an XADD that
    # Redis does not answer (held by the proxy, with the running job's
    # put-back behind it). The command connection is reset at its 10 s
    # deadline, before the drain gives up (10 s after its time is up): the
    # job is then held, put back on the new connection with the other, and
    # jobd exits 0 with nothing lost. (Were the park still unanswered when
    # the drain gives up, jobd would say "pub/sub job lost at exit", count
    # it in the give-up line and exit 1; with both limits at 10 s that is a
    # window of a few ms, not reached here.)
    proxy = SlowDelivery(redis_server.port, trigger=b"late-park", hold=60, upstream=True)
    try:
        daemon = draining_with_a_long_job(r, start_jobd, proxy.port, long_ms=60000,
                                          drain_ms=1000)
        assert publish(r, {"id": "late-park", "type": "sleep", "ms": 1}) == 1
        wait_for(proxy.held.is_set, what="the park's XADD held")
        assert daemon.proc.wait(30) == 0
        log = daemon.log_text()
        assert "parking a pub/sub job on the stream failed: connection lost" in log, log
        assert "lost" not in log.replace("connection lost", ""), log
        assert copies_of(r, "late-park") == 1 and live_copies(r, "long") == 1
        assert result(r, "late-park") is None
    finally:
        proxy.close()


class LateNewConnections(ForwardingProxy):
    """A TCP proxy in front of Redis; once .late is set, what Redis sends on
    connections accepted from then on reaches jobd DELAY seconds late, from
    the first confirmation of a (P)SUBSCRIBE on (the handshake's replies come
    at once: a subscriber sends its SUBSCRIBEs only after them)."""

    def __init__(self, redis_port, delay=3.0):
        self.delay, self.late = delay, False
        super().__init__(redis_port)

    def new_state(self):
        return {"delay": self.delay if self.late else 0}

    def forward(self, data, src, dst, state, upstream):
        if not upstream and state["delay"] and b"subscribe" in data:
            time.sleep(state["delay"])      # this chunk late, the rest behind it
            state["delay"] = 0
        dst.sendall(data)
        return True


def test_a_job_published_to_an_unconfirmed_subscription_at_the_drains_end_is_not_lost(
        r, redis_server, start_jobd):
    # The subscriber reconnects during the drain and its SUBSCRIBEs are not
    # confirmed yet when the drain ends: Redis already delivers to them
    # (PUBLISH counts this daemon), so the exit must unsubscribe and read
    # them too, not take "nothing confirmed" for "nothing to read".
    proxy = LateNewConnections(redis_server.port)
    try:
        daemon = draining_with_a_long_job(r, start_jobd, proxy.port, long_ms=2000, drain_ms=5000)
        proxy.late = True
        r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        wait_for(lambda: r.pubsub_numsub(f"{NS}:jobs")[0][1] == 1, what="subscribed again")
        assert publish(r, {"id": "wire", "type": "sleep", "ms": 1}) == 1
        assert daemon.proc.wait(30) == 0
        assert result(r, "wire") is not None or copies_of(r, "wire") == 1, daemon.log_text()
    finally:
        proxy.close()


def test_a_job_stopping_on_the_pool_past_the_give_up_still_goes_back(r, start_jobd, tmp_path):
    # A pub/sub file read on a filesystem so slow that one read() takes
    # 11.5 s: the job sees the drain's stop only at its next cancel check,
    # after the drain gave up on Redis (10 s after drain_ms). The loop used
    # to end then, blaming Redis; the put-back, queued when the pool task
    # came back after the loop, went down with the connection unsent: the
    # job lost, exit 1. Now the loop waits for the pool, writes the put-back
    # and exits 0.
    root = tmp_path / "root"
    root.mkdir()
    (root / "slow.txt").write_text("slow\n")
    daemon = start_jobd(files__root=str(root), shutdown__drain_ms=200,
                        env=slow_read_env(tmp_path, 11500))
    assert publish(r, {"id": "slowread", "type": "file", "path": "slow.txt"}) == 1
    wait_for(lambda: "job slowread: attempt 1" in daemon.log_text(), what="the read to start")
    time.sleep(0.3)     # in read()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0, daemon.log_text()
    log = daemon.log_text()
    assert "could not be written to Redis" not in log, log
    assert "1 thread pool task(s) still stopping" in log, log
    assert [f["id"] for _, f in r.xrange(f"{NS}:queue")] == ["slowread"]
    start_jobd(name="second", files__root=str(root))
    rec = wait_result(r, "slowread")
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
    assert rec["result"]["content"] == "slow\n"


def kill_subscriber_until(r, stop, every=0.05):
    """CLIENT KILL TYPE pubsub every EVERY seconds until STOP is set: the
    subscriber is lost at every stage of a drain (jobs running, its
    UNSUBSCRIBE waited for, reconnecting...)."""
    while not stop.is_set():
        try:
            r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        except Exception:
            pass
        stop.wait(every)


@pytest.mark.parametrize("jobs_ms,drain_ms", [(1500, 5000), (10000, 1000)],
                         ids=["jobs_end", "drain_ends"])
def test_the_subscriber_lost_during_the_drain_still_ends_it_with_a_record_for_every_job(
        r, start_jobd, jobs_ms, drain_ms):
    # The subscriber connection is killed right after SIGTERM and again and
    # again while the drain runs: the drain still ends by its deadline, every
    # job it took ends with a record (or, at the deadline, goes back on its
    # stream), a job published meanwhile is parked, and jobd exits 0.
    daemon = start_jobd(shutdown__drain_ms=drain_ms)
    ids = [f"p{i}" for i in range(3)] + [f"s{i}" for i in range(3)]
    for i in ids:
        job = {"id": i, "type": "sleep", "ms": jobs_ms}
        if i.startswith("p"):
            assert publish(r, job) == 1
        else:
            submit(r, job)
    wait_for(lambda: daemon.log_text().count("started (sleep)") == 6, what="6 running jobs")
    stop = threading.Event()
    killer = threading.Thread(target=kill_subscriber_until, args=(r, stop))
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    killer.start()
    try:
        time.sleep(0.3)
        late = publish(r, {"id": "late", "type": "sleep", "ms": 1})
        assert daemon.proc.wait(drain_ms / 1000 + 5) == 0, daemon.log_text()
    finally:
        stop.set()
        killer.join()
    assert time.monotonic() - t0 < drain_ms / 1000 + 3
    log = daemon.log_text()
    assert "lost" not in log.replace("connection lost", ""), log
    # Back during the drain, the subscriber did not say intake resumed.
    assert "subscriber back during the drain" in log and "intake resumed" not in log, log
    if jobs_ms < drain_ms:
        recs = wait_results(r, ids)
        assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    else:
        assert r.keys(f"{NS}:result:*") == []
        assert all(live_copies(r, i) == 1 for i in ids), r.xrange(f"{NS}:queue")
    # Heard while draining: parked on the stream, not run, not lost.
    assert copies_of(r, "late") == late and result(r, "late") is None
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0
    start_jobd(name="second")
    recs = wait_results(r, ids + ["late"] * late, timeout=20)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
