"""NS:cancels (src/cancels.c and its callers): the cases a review of the
first version found, each failing on it."""
import contextlib
import signal
import subprocess
import time

from conftest import (NS, Jobd, RedisServer, cancel, free_port, publish, submit, wait_for,
                      wait_result)
from test_cancel_sweep import clock_shim  # noqa: F401 (a fixture)
from redis_proxy import ForwardingProxy
from test_admin import get, parse_metrics
from test_jobctl import ctl
from test_redis_outage import loaded, slow_loading_redis

def test_jobctl_cancel_still_publishes_when_ns_cancels_is_refused(r, start_jobd):
    # A set Redis refuses (an ACL, a key of another type) must not stop the
    # cancel itself: jobctl exited on the ZADD's error without publishing,
    # so the running job was not cancelled at all. It now warns and publishes.
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
    # LOADING for ZREVRANGEBYSCORE NS:cancels. It was never asked again, and
    # the job waiting in the stream whose cancel is in NS:cancels ran; now it
    # is asked every second, and nothing is read from the stream before.
    server = slow_loading_redis(tmp_path)
    r = server.client
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


def test_eviction_keeps_the_newest_loaded_cancels(r, start_jobd):
    # cancels.h: "past that within the hour the oldest go". NS:cancels is
    # read latest-expiring first and memory evicts in insertion order: read
    # in that order, the newest tenth of the loaded cancels went, while the
    # set's own trim (ZREMRANGEBYRANK) drops the oldest. Now taken oldest
    # first.
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
    # jobd_cancels_remembered: "Job ids cancelled within jobs.cancel_ttl". An
    # expired id stayed in memory (it was forgotten only at 100,000) and was
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
    # top-level job of its own); atoi("01") took it for child 1.
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


@contextlib.contextmanager
def daemon_behind_subscribe_delayer(tmp_path, delay=0.0):
    """A Redis, a SubscribeDelayer in front of it holding SUBSCRIBEs DELAY s,
    and a daemon (not started) using the proxy: (client, proxy, daemon),
    all stopped on the way out."""
    server = RedisServer(tmp_path)
    proxy = SubscribeDelayer(server.port)
    proxy.delay = delay
    daemon = Jobd(tmp_path, proxy.port)
    try:
        yield server.client, proxy, daemon
    finally:
        daemon.stop()
        proxy.close()
        server.kill()


def test_a_cancel_between_the_load_and_the_subscribe_is_not_lost(tmp_path):
    # The subscriber side read NS:cancels at connect, while its SUBSCRIBEs
    # went out; nothing orders the two in Redis. A cancel kept and published
    # (jobctl: ZADD, then PUBLISH) after the read and before the SUBSCRIBE was
    # in neither: never learned. Now read once the SUBSCRIBEs are confirmed.
    with daemon_behind_subscribe_delayer(tmp_path) as (r, proxy, daemon):
        daemon.start()
        submit(r, {"id": "w", "type": "sleep", "ms": 1, "delay_ms": 4000})
        wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
        proxy.delay = 1.5
        assert r.client_kill_filter(_type="pubsub") >= 1
        wait_for(lambda: daemon.log_text().count("redis subscriber connection ready") == 2,
                 what="the subscriber back")
        time.sleep(0.5)     # its NS:cancels read has been answered
        r.zadd(f"{NS}:cancels", {"w": time.time() * 1000 + 3_600_000})
        heard = cancel(r, "w")
        assert heard == 0   # the window: subscriber up, not yet subscribed
        rec = wait_result(r, "w", timeout=15)
        assert rec["status"] == "cancelled", rec


def cancel_reads(monitor_lines):
    return [line for line in monitor_lines
            if "ZREVRANGEBYSCORE" in line and f"{NS}:cancels" in line]


def test_start_up_reads_ns_cancels_once(tmp_path):
    # The stream connection read NS:cancels before its groups, and the
    # subscriber's confirmation read it again a moment later: two reads at
    # every start. Now the stream's read waits for the confirmation and
    # serves both. The SUBSCRIBEs are held back a little, so the stream is
    # up first, as on a quiet machine: on a loaded one the subscriber is
    # sometimes confirmed before the stream connection is up, and both read
    # (its read is not put off: the confirmation's read comes at once).
    with daemon_behind_subscribe_delayer(tmp_path, 0.2) as (r, proxy, daemon):
        monitor = subprocess.Popen(["redis-cli", "-p", str(proxy.redis_port), "monitor"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: r.execute_command("CLIENT", "LIST", "TYPE", "normal")
                     .count("cmd=monitor") >= 1, what="MONITOR")
            daemon.start()
            submit(r, {"id": "after", "type": "sleep", "ms": 1})
            wait_result(r, "after")
            time.sleep(0.3)
        finally:
            monitor.terminate()
            seen = monitor.stdout.read().splitlines()
            monitor.wait()
    assert "redis stream connection ready" in daemon.log_text()
    assert len(cancel_reads(seen)) == 1, "\n".join(seen[:40])


def test_a_cancel_written_before_the_subscribe_at_start_up_is_not_lost(tmp_path):
    # At start-up the one read of NS:cancels must still come after the
    # subscriptions are confirmed: a cancel kept while they are on their way
    # reaches a job published once the daemon is ready, as it did. The
    # stream's jobs are read after that read too now: one waiting there
    # with such a cancel never starts (it ran when the stream connection
    # read NS:cancels and its jobs before the cancel was kept). The delay is
    # under the stream's wait for the confirmation (1 s).
    with daemon_behind_subscribe_delayer(tmp_path, 0.5) as (r, proxy, daemon):
        submit(r, {"id": "queued", "type": "sleep", "ms": 1})
        daemon.start(wait=False)
        wait_for(lambda: "redis subscriber connection ready" in daemon.log_text()
                 and "redis stream connection ready" in daemon.log_text(),
                 what="the connections up, the SUBSCRIBEs held")
        for job_id in ("queued", "pub"):
            r.zadd(f"{NS}:cancels", {job_id: time.time() * 1000 + 3_600_000})
            assert cancel(r, job_id) == 0   # the window: not subscribed yet
        daemon.wait_ready()
        wait_for(lambda: publish(r, {"id": "pub", "type": "sleep", "ms": 1}) == 1,
                 what="the job channel subscribed")
        for job_id in ("pub", "queued"):
            rec = wait_result(r, job_id, timeout=15)
            assert rec["status"] == "cancelled", rec
        assert "job queued: attempt 1" not in daemon.log_text()


# ---- jobs.cancel_ttl: how long a cancel is kept ------------------------------

def zadd_calls(r):
    return r.info("commandstats").get("cmdstat_zadd", {}).get("calls", 0)


def cancel_expires_in_ms(r, job_id):
    return r.zscore(f"{NS}:cancels", job_id) - time.time() * 1000


def test_cancel_ttl_sets_how_long_a_cancel_is_kept(r, start_jobd):
    # A cancel was kept for an hour, fixed. With jobs.cancel_ttl = 2 it is
    # kept two seconds, in memory and in NS:cancels: a job that arrives
    # within them ends cancelled, one that arrives after them runs.
    daemon = start_jobd(jobs__cancel_ttl=2)
    for job_id in ("soon", "late"):
        cancel(r, job_id)
    wait_for(lambda: r.zscore(f"{NS}:cancels", "late"), what="the cancels kept")
    assert 1000 < cancel_expires_in_ms(r, "late") <= 2000
    heard = time.monotonic()
    submit(r, {"id": "soon", "type": "sleep", "ms": 1})
    assert wait_result(r, "soon")["status"] == "cancelled"
    time.sleep(max(0.0, heard + 2.3 - time.monotonic()))
    submit(r, {"id": "late", "type": "sleep", "ms": 1})
    assert wait_result(r, "late")["status"] == "succeeded"
    assert "expire" not in daemon.log_text()


def test_sighup_changes_cancel_ttl_for_the_cancels_after_it(r, start_jobd):
    daemon = start_jobd(jobs__cancel_ttl=60)
    cancel(r, "before")
    wait_for(lambda: r.zscore(f"{NS}:cancels", "before"), what="the first cancel kept")
    daemon.settings["jobs"]["cancel_ttl"] = 600
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    cancel(r, "after")
    wait_for(lambda: r.zscore(f"{NS}:cancels", "after"), what="the second cancel kept")
    assert 50_000 < cancel_expires_in_ms(r, "before") <= 60_000
    assert 590_000 < cancel_expires_in_ms(r, "after") <= 600_000


def test_a_longer_cancel_of_another_daemon_is_kept_as_long(r, start_jobd):
    # Daemons with different cancel_ttl share NS:cancels. One with 60 s
    # must not cut another's hour-long cancel to its own 60 s, neither when
    # it reads the set nor when it hears the same cancel and writes it last.
    short = start_jobd(jobs__cancel_ttl=60)
    r.zadd(f"{NS}:cancels", {"far": time.time() * 1000 + 3_600_000})   # the other daemon's
    zadds = zadd_calls(r)
    cancel(r, "far")                    # heard by the short one, which writes it too
    wait_for(lambda: zadd_calls(r) > zadds, what="the short daemon's ZADD")
    assert 3_500_000 < cancel_expires_in_ms(r, "far") <= 3_600_000
    assert short.stop() == 0
    again = start_jobd(name="again", jobs__cancel_ttl=60)   # reads the set at start
    submit(r, {"id": "far", "type": "sleep", "ms": 1})
    assert wait_result(r, "far")["status"] == "cancelled"
    assert 3_500_000 < cancel_expires_in_ms(r, "far") <= 3_600_000
    assert "expire more than" not in again.log_text()


def test_a_day_long_cancel_ttl_reaches_a_job_read_two_hours_later(r, start_jobd, clock_shim):
    # A job can wait in a stream's backlog longer than an hour (no daemon
    # ran, or all were busy), and with the default TTL its cancel expired
    # first and the job ran. With jobs.cancel_ttl = 86400, jobctl keeps the
    # cancel a day, and a daemon that reads the job two hours later (its
    # clock set two hours ahead) still ends it cancelled. Beside it, a job
    # whose cancel was kept the default's hour runs: the TTL made the
    # difference.
    conf = start_jobd(jobs__cancel_ttl=86400)     # for jobctl -c, and the group
    assert conf.stop() == 0
    submit(r, {"id": "backlog", "type": "sleep", "ms": 1})
    submit(r, {"id": "forgot", "type": "sleep", "ms": 1})
    out = ctl(conf, "cancel", "backlog")
    assert out.returncode == 0 and "kept for 86400 s" in out.stdout, (out.stdout, out.stderr)
    assert 86_390_000 < cancel_expires_in_ms(r, "backlog") <= 86_400_000
    r.zadd(f"{NS}:cancels", {"forgot": time.time() * 1000 + 3_600_000})  # the default's hour
    two_hours_on = {"LD_PRELOAD": clock_shim, "CLOCK_SHIM_OFFSET_MS": str(2 * 3_600_000)}
    daemon = start_jobd(name="later", jobs__cancel_ttl=86400, env=two_hours_on)
    rec = wait_result(r, "backlog")
    assert rec["status"] == "cancelled" and "before it started" in rec["error"]["message"], rec
    assert wait_result(r, "forgot")["status"] == "succeeded"
    assert "1 cancel(s) read from jobd:cancels" in daemon.log_text()
