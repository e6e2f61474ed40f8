"""NS:cancels (src/cancels.c and its callers): cases found in review.

Each test states what the README / cancels.h promise; a failure shows the
code does not keep that promise."""
import json
import os
import subprocess
import time

import redis

from conftest import NS, REPO, Jobd, RedisServer, free_port, submit, wait_for, wait_result
from redis_proxy import ForwardingProxy
from test_admin import get, parse_metrics

JOBCTL = os.path.join(os.path.dirname(os.environ.get("JOBD_BIN", REPO + "/src/jobd")), "jobctl")


def ctl(daemon, *args):
    return subprocess.run([JOBCTL, "-c", str(daemon.conf), *args], capture_output=True,
                          text=True, timeout=30)


def cancel(r, job_id):
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": job_id}))


def test_jobctl_cancel_still_publishes_when_ns_cancels_is_refused(r, start_jobd):
    # README: "A cancel heard while Redis refuses the set (an ACL, a key of
    # another type) is kept in that daemon's memory only". jobctl's ZADD goes
    # through cmd(), which exits on an error reply: the PUBLISH is never sent,
    # so the running job is not cancelled at all (a regression: jobctl cancel
    # used to be a bare PUBLISH).
    r.set(f"{NS}:cancels", "not a sorted set")
    daemon = start_jobd()
    submit(r, {"id": "long", "type": "sleep", "ms": 8000})
    wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="the job to start")
    out = ctl(daemon, "cancel", "long")
    assert out.returncode == 0, (out.returncode, out.stderr)
    rec = wait_result(r, "long", timeout=5)
    assert rec["status"] == "cancelled", rec


def test_cancels_are_read_even_when_redis_was_loading(tmp_path):
    # A daemon started (or reconnected) while Redis loads its dataset gets
    # LOADING for ZREVRANGEBYSCORE NS:cancels; loaded_reply() logs it and
    # never asks again, while XGROUP CREATE / XREADGROUP are retried. The
    # job waiting in the stream whose cancel is in NS:cancels then runs.
    server = RedisServer(tmp_path, appendonly=True)
    r = server.client
    pad = r.pipeline(transaction=False)
    for i in range(10000):
        pad.set(f"pad:{i}", "x")
    pad.execute()
    r.zadd(f"{NS}:cancels", {"doomed": time.time() * 1000 + 3_600_000})
    submit(r, {"id": "doomed", "type": "sleep", "ms": 1})
    server.kill()
    server.start(extra=["--key-load-delay", "200"], wait=False)
    daemon = Jobd(tmp_path, server.port)
    try:
        daemon.start(wait=False)
        wait_for(lambda: "LOADING" in daemon.log_text(), timeout=20, what="jobd told LOADING")
        wait_for(lambda: loaded(r), timeout=30, what="Redis loaded")
        rec = wait_result(r, "doomed", timeout=30)
        log = daemon.log_text()
        assert "reading jobd:cancels failed: LOADING" in log, log   # the cause, when this fails
        assert rec["status"] == "cancelled", rec
    finally:
        daemon.stop()
        server.kill()


def loaded(r):
    try:
        return r.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
        return False


def test_eviction_keeps_the_newest_loaded_cancels(r, start_jobd):
    # cancels.h: "past that within the hour the oldest go". NS:cancels is
    # read latest-expiring first (ZREVRANGEBYSCORE) and inserted in that
    # order, and forget_old() drops in insertion order: the NEWEST tenth of
    # the loaded cancels goes, while the set's own trim (ZREMRANGEBYRANK)
    # drops the oldest.
    now = time.time() * 1000
    pipe = r.pipeline(transaction=False)
    for i in range(0, 100000, 5000):
        pipe.zadd(f"{NS}:cancels",
                  {f"c{j}": now + 3_500_000 - j * 10 for j in range(i, i + 5000)})
    pipe.execute()
    daemon = start_jobd()
    wait_for(lambda: "100000 cancel(s) read" in daemon.log_text(), timeout=20,
             what="the cancels loaded")
    time.sleep(1.5)             # the second (subscriber) load too
    cancel(r, "trigger")        # memory full: a tenth is forgotten
    wait_for(lambda: "forgetting the oldest" in daemon.log_text(), what="the eviction")
    submit(r, {"id": "c99999", "type": "sleep", "ms": 1})   # the oldest cancel
    submit(r, {"id": "c0", "type": "sleep", "ms": 1})       # the newest cancel
    assert r.zscore(f"{NS}:cancels", "c0") is not None      # Redis keeps the newest
    assert wait_result(r, "c0")["status"] == "cancelled"
    wait_result(r, "c99999")


def test_the_gauge_does_not_count_expired_cancels(r, start_jobd):
    # jobd_cancels_remembered: "Job ids cancelled within the last hour". An
    # expired id stays in memory (forget_old() runs only at 100,000) and is
    # counted for ever.
    r.zadd(f"{NS}:cancels", {"soon": time.time() * 1000 + 1500})
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    wait_for(lambda: "1 cancel(s) read" in daemon.log_text(), what="the cancel loaded")
    time.sleep(2.5)
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_cancels_remembered"] == 0


def test_a_child_index_with_a_leading_zero_is_not_that_child(r, start_jobd):
    # Children are named "%s:%d": "g:01" names no child (it may be a
    # top-level job of its own), but find_child() takes atoi("01") == 1.
    daemon = start_jobd()
    submit(r, {"id": "g", "type": "group", "jobs": [
        {"type": "sleep", "ms": 1500}, {"type": "sleep", "ms": 1500}]})
    wait_for(lambda: "job g:1: attempt 1" in daemon.log_text(), what="the children to start")
    cancel(r, "g:01")
    rec = wait_result(r, "g")
    assert [c["status"] for c in rec["result"]["results"]] == ["succeeded", "succeeded"], rec


class SubscribeDelayer(ForwardingProxy):
    """Holds back a chunk that carries SUBSCRIBE for DELAY seconds, as if
    Redis served the command connection first."""
    delay = 0.0

    def forward(self, data, src, dst, state, upstream):
        if upstream and b"SUBSCRIBE" in data and self.delay:
            time.sleep(self.delay)
        dst.sendall(data)
        return True


def test_a_cancel_between_the_load_and_the_subscribe_is_not_lost(tmp_path):
    # sub_up() sends ZREVRANGEBYSCORE on the command connection and the
    # SUBSCRIBEs on the subscriber connection at once; nothing orders the two
    # in Redis. A cancel kept and published (jobctl: ZADD, then PUBLISH)
    # after the read and before the SUBSCRIBE is in neither: never learned.
    server = RedisServer(tmp_path)
    r = server.client
    proxy = SubscribeDelayer(server.port)
    daemon = Jobd(tmp_path, proxy.port)
    try:
        daemon.start()
        submit(r, {"id": "w", "type": "sleep", "ms": 1, "delay_ms": 4000})
        wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
        proxy.delay = 1.5
        assert r.client_kill_filter(_type="pubsub") >= 1
        wait_for(lambda: daemon.log_text().count("redis subscriber connection ready") == 2,
                 what="the subscriber back")
        time.sleep(0.5)     # its NS:cancels read has been answered
        r.zadd(f"{NS}:cancels", {"w": time.time() * 1000 + 3_600_000})
        heard = r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "w"}))
        assert heard == 0   # the window: subscriber up, not yet subscribed
        rec = wait_result(r, "w", timeout=15)
        assert rec["status"] == "cancelled", rec
    finally:
        daemon.stop()
        proxy.close()
        server.kill()
