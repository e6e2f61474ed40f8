"""Cancels for jobs that wait in NS:scheduled longer than a cancel is
remembered (an hour): the sweep in src/scheduler.c makes them due now, so
that they end cancelled (PROTOCOL §5: "a waiting job never starts"). The
reviews of its first two versions found the cases from the busy-Redis test on."""
import json
import time

import pytest
import redis

from conftest import (NS, build_preload_shim, cancel, free_port, submit, wait_for,
                      wait_result)
from test_admin import get, parse_metrics
from test_jobctl import ctl

HOUR = 3600 * 1000
HOURS_2 = 2 * HOUR


def scheduled(r):
    """NS:scheduled as {id: (score, member)}."""
    return {json.loads(m)["id"]: (score, m)
            for m, score in r.zrange(f"{NS}:scheduled", 0, -1, withscores=True)}


def test_a_cancel_reaches_a_job_delayed_past_the_hour(r, start_jobd):
    # The job came due two hours after its cancel, which had been forgotten
    # after one: it ran. Now every cancelled job in NS:scheduled is made due
    # at once, and ends cancelled.
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    submit(r, {"id": "kept", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    submit(r, {"id": "soon", "type": "sleep", "ms": 1, "delay_ms": 120_000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 3, what="the delayed jobs")
    before = scheduled(r)
    assert before["far"][1].startswith('{"id":"far",'), "the id first, for the sweep"
    cancel(r, "far")
    cancel(r, "soon")
    for job_id in ("far", "soon"):
        rec = wait_result(r, job_id, timeout=10)
        assert rec["status"] == "cancelled" and "before it started" in rec["error"]["message"], rec
    wait_for(lambda: "cancelled job(s) in jobd:scheduled made due now" in daemon.log_text(),
             what="the sweep's log line")
    assert scheduled(r) == {"kept": before["kept"]}, "another job keeps its time"
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_cancels_made_due_total"] == 2
    assert metrics["jobd_retries_total"] == 0


def test_a_cancel_sent_while_no_daemon_runs_reaches_a_job_delayed_for_hours(r, start_jobd):
    # No daemon heard the PUBLISH: the sweep follows the read of NS:cancels.
    daemon = start_jobd()
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    assert daemon.stop() == 0
    out = ctl(daemon, "cancel", "far")
    assert out.returncode == 0, out.stderr
    daemon.start()
    rec = wait_result(r, "far", timeout=10)
    assert rec["status"] == "cancelled", rec
    assert r.zcard(f"{NS}:scheduled") == 0


def test_the_sweep_pages_through_a_large_set(r, start_jobd):
    # Many pages, in a set past Redis's compact encoding: the cancelled job
    # is found whichever page holds it, and a job of another id whose text
    # contains `"id":"far"` is not taken for it. The fillers are written as
    # jobd wrote members before the id came first (the id after the job).
    now = time.time() * 1000
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        job = json.dumps({"id": f"filler{i}", "type": "sleep", "ms": 1})
        member = json.dumps({"stream": f"{NS}:queue", "job": job, "id": f"filler{i}",
                             "attempts": "0", "queued_at": str(int(now)),
                             "due": str(int(now + HOURS_2)), "nonce": f"t-{i}"},
                            separators=(",", ":"))
        pipe.zadd(f"{NS}:scheduled", {member: now + HOURS_2 + i})
    pipe.execute()
    daemon = start_jobd()
    submit(r, {"id": "decoy", "type": "sleep", "ms": 1, "delay_ms": HOURS_2,
               "reply_to": '"id":"far"'})
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 3002, what="the delayed jobs")
    cancel(r, "far")
    assert wait_result(r, "far", timeout=10)["status"] == "cancelled"
    wait_for(lambda: "1 cancelled job(s) in jobd:scheduled made due now" in daemon.log_text(),
             what="the sweep's log line")
    assert r.zcard(f"{NS}:scheduled") == 3001
    assert r.get(f"{NS}:result:decoy") is None


def test_a_job_made_due_early_whose_cancel_is_forgotten_waits_again(r, start_jobd):
    # The entry the mover writes for a job made due early by a sweep, read
    # by a daemon that does not remember the cancel (flooded out of its
    # memory meanwhile): it is scheduled again for its old time, not run,
    # and not counted as a retry though it had an attempt.
    port = free_port()
    now = int(time.time() * 1000)
    due = now + HOURS_2
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    job = json.dumps({"id": "early", "type": "sleep", "ms": 1})
    r.xadd(f"{NS}:queue", {"job": job, "id": "early", "attempts": "1",
                           "queued_at": str(now), "due": str(now), "early_due": str(due)})
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the job scheduled again")
    score, member = scheduled(r)["early"]
    assert score == due and json.loads(member)["due"] == str(due), member
    assert json.loads(member)["attempts"] == "1"
    assert r.get(f"{NS}:result:early") is None
    assert "and not cancelled here; scheduled again" in daemon.log_text()
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_retries_total"] == 0
    # Its time passed meanwhile (it waited in the stream): it runs.
    r.xadd(f"{NS}:queue", {"job": json.dumps({"id": "late", "type": "sleep", "ms": 1}),
                           "id": "late", "attempts": "0", "queued_at": str(now),
                           "due": str(now), "early_due": str(now - 1000)})
    assert wait_result(r, "late")["status"] == "succeeded"


def test_an_early_due_past_any_run_at_is_ignored_not_parked_for_ever(r, start_jobd):
    # "early_due" is jobd's own stream entry field, but a producer can write
    # it: 9223372036854775807 parked the job in NS:scheduled past the year
    # 2100 that run_at allows, where the cancel sweep does not look, never to
    # run. Now it is ignored, with a warning, and the job runs.
    daemon = start_jobd()
    r.xadd(f"{NS}:queue", {"job": json.dumps({"id": "forged", "type": "sleep", "ms": 1}),
                           "early_due": "9223372036854775807"})
    assert wait_result(r, "forged")["status"] == "succeeded"
    assert r.zcard(f"{NS}:scheduled") == 0
    assert "job forged: stream entry field early_due 9223372036854775807 is past any run_at" \
        in daemon.log_text()


def test_a_refused_sweep_is_logged_once_and_the_daemon_goes_on(r, start_jobd):
    # NS:cancels of another type: the sweep's ZSCORE is refused. Cancels
    # still work in memory; the refusal is logged at error level once.
    r.set(f"{NS}:cancels", "not a sorted set")
    daemon = start_jobd()
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    cancel(r, "far")
    wait_for(lambda: "looking for cancelled jobs in jobd:scheduled failed" in daemon.log_text(),
             what="the refusal logged")
    cancel(r, "other")          # a second pass, refused again
    time.sleep(0.5)
    assert daemon.log_text().count("ERROR looking for cancelled jobs in jobd:scheduled") == 1
    submit(r, {"id": "other", "type": "sleep", "ms": 1})
    assert wait_result(r, "other")["status"] == "cancelled"


# Holds Redis for 1.5 s (TIME is read afresh on each call in Redis 7).
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
local s = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) - s > 1500000 then break end
end
return 1
"""


def test_a_sweep_refused_by_a_busy_redis_is_tried_again(r, redis_server, start_jobd):
    # A refusal about Redis (BUSY here; LOADING alike) ended the pass for
    # good, and the job ran when it came due. Now the pass starts again.
    daemon = start_jobd()
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    r.config_set("busy-reply-threshold", 100)
    cancel(r, "far")
    wait_for(lambda: r.zscore(f"{NS}:cancels", "far"), what="the cancel stored")
    busy = redis.Redis(port=redis_server.port)
    busy.eval(BUSY_SCRIPT, 0)
    wait_for(lambda: "looking for cancelled jobs in jobd:scheduled failed: BUSY"
             in daemon.log_text(), what="the sweep refused with BUSY")
    rec = wait_result(r, "far", timeout=10)
    assert rec["status"] == "cancelled", rec


def test_a_job_due_soon_after_an_old_cancel_expires_ends_cancelled(r, start_jobd):
    # A cancel read from NS:cancels near the end of its hour (as `jobctl
    # cancel` left it while no daemon ran), for a job due just after the
    # cancel expires: made due now too, not left to run at its time.
    daemon = start_jobd()
    submit(r, {"id": "old", "type": "sleep", "ms": 1, "delay_ms": 9000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    assert daemon.stop() == 0
    r.zadd(f"{NS}:cancels", {"old": int(time.time() * 1000) + 4000})
    daemon.start()
    rec = wait_result(r, "old", timeout=20)
    assert rec["status"] == "cancelled", rec


def test_a_sweep_page_of_large_jobs_does_not_hold_redis(r, start_jobd):
    # A member carries its whole job (up to limits.max_job_bytes, 1 MiB).
    # Pages of 200 members, each searched with a Lua pattern at every
    # position, held Redis for seconds: no client was answered. Pages are
    # now fitted to about 1 MiB, and the id is found without a pattern.
    now = int(time.time() * 1000)
    pad = "x" * ((1 << 20) - 200)
    for start in range(0, 60, 10):
        pipe = r.pipeline(transaction=False)
        for i in range(start, start + 10):
            job = json.dumps({"id": f"big{i}", "type": "hash", "data": pad})
            member = json.dumps({"stream": f"{NS}:queue", "job": job, "id": f"big{i}",
                                 "attempts": "0", "queued_at": str(now),
                                 "due": str(now + HOURS_2), "nonce": f"n{i}"},
                                separators=(",", ":"))
            pipe.zadd(f"{NS}:scheduled", {member: now + HOURS_2 + i})
        pipe.execute()
    daemon = start_jobd()
    cancel(r, "big59")
    worst = 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        t = time.monotonic()
        r.ping()
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.01)
    assert worst < 0.5, f"Redis held for {worst:.1f} s by one sweep page"
    assert wait_result(r, "big59", timeout=20)["status"] == "cancelled"
    assert r.zcard(f"{NS}:scheduled") == 59
    assert "ERROR" not in daemon.log_text()


# A clock for one daemon: CLOCK_REALTIME moved by CLOCK_SHIM_OFFSET_MS, the
# way a host whose clock differs from its neighbours' sees the time.
CLOCK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

int clock_gettime(clockid_t id, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    const char *s = getenv("CLOCK_SHIM_OFFSET_MS");
    if (rc == 0 && id == CLOCK_REALTIME && s) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec +
                       atoll(s) * 1000000LL;
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
    }
    return rc;
}
"""


def now_ms():
    return int(time.time() * 1000)


def member(job_id, due, stream=f"{NS}:queue", job=None, nonce="t"):
    """An NS:scheduled member as write_schedule() writes it (id first)."""
    job = job if job is not None else json.dumps({"id": job_id, "type": "sleep", "ms": 1})
    return json.dumps({"id": job_id, "stream": stream, "job": job, "attempts": "0",
                       "queued_at": str(now_ms()), "due": str(due), "nonce": nonce},
                      separators=(",", ":"))


def zscan_calls(r):
    return r.info("commandstats").get("cmdstat_zscan", {}).get("calls", 0)


def wait_quiet_zscan(r, quiet=1.0, timeout=30):
    """The ZSCAN count once it has not moved for QUIET seconds."""
    deadline = time.monotonic() + timeout
    last, since = zscan_calls(r), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        c = zscan_calls(r)
        if c != last:
            last, since = c, time.monotonic()
        elif c and time.monotonic() - since >= quiet:
            return c
    raise AssertionError("the sweep did not settle")


@pytest.fixture
def clock_shim(tmp_path):
    src = tmp_path / "clock_shim.c"
    src.write_text(CLOCK_SHIM)
    return build_preload_shim(tmp_path, src)


def test_a_member_swept_twice_keeps_its_own_time(r, start_jobd, clock_shim):
    # Two daemons whose clocks differ (here by 60 s; by a few ms, two
    # daemons sweeping at once race the same way, since each sends its own
    # "now"). The one ahead sweeps the job: score = its now, early_due =
    # the job's time. The one behind then sees a member "not yet due" whose
    # id is cancelled and sweeps it again, appending a second early_due (the
    # first daemon's now); cjson keeps the last one, so the job's own time
    # was lost, and a daemon that no longer knew the cancel scheduled it for
    # that "now" instead of its time: two hours early. A member that has
    # early_due now keeps it.
    r.execute_command("ACL", "SETUSER", "nomove", "on", ">pw", "~*", "&*", "+@all",
                      "-zrangebyscore")     # its mover cannot move (keeps the test deterministic)
    other = [f"{NS}:other"]
    start_jobd(name="behind", intake__streams=other)
    due = now_ms() + HOURS_2
    r.zadd(f"{NS}:scheduled", {member("far", due): due})
    r.zadd(f"{NS}:cancels", {"far": now_ms() + HOUR})      # as `jobctl cancel` leaves it
    start_jobd(name="ahead", intake__streams=other, redis__username="nomove",
               redis__password="pw",
               env={"LD_PRELOAD": clock_shim, "CLOCK_SHIM_OFFSET_MS": "60000"})
    wait_for(lambda: any("early_due" in m for m in r.zrange(f"{NS}:scheduled", 0, -1)),
             what="the first sweep (the daemon ahead read the cancel at start)")
    cancel(r, "another")        # any cancel: both daemons sweep
    time.sleep(0.5)
    wait_quiet_zscan(r)
    (m, score), = r.zrange(f"{NS}:scheduled", 0, -1, withscores=True)
    assert m.count('"early_due"') == 1 and json.loads(m)["early_due"] == str(due), m


def test_passes_run_at_most_every_10_s(r, start_jobd):
    # README: a pass starts "no sooner than 10 s after the one before", so
    # each daemon reads the whole set at most every 10 s. The 10 s were only
    # kept for cancels heard while a pass ran: one heard after a pass ended
    # started another 100 ms later, so a cancel every 400 ms made a full
    # scan of NS:scheduled every 400 ms.
    due = now_ms() + HOURS_2
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.zadd(f"{NS}:scheduled", {member(f"filler{i}", due, nonce=f"n{i}"): due + i})
    pipe.execute()
    start_jobd()
    cancel(r, "c0")
    per_pass = wait_quiet_zscan(r)
    for i in range(1, 9):
        cancel(r, f"c{i}")
        time.sleep(0.4)
    time.sleep(0.5)
    passes = (zscan_calls(r) - per_pass) / per_pass
    assert passes <= 1, f"{passes:.0f} more full passes within 4 s of the first"


def test_a_cancel_for_a_job_whose_schedule_write_is_pending_reaches_it(r, start_jobd):
    # A cancel that comes while the job's write to NS:scheduled is refused
    # (and kept to be written again each second) is not applied to it
    # (runner_apply_cancel() only stops running or queued jobs), and the
    # pass it starts finds nothing (here it ends for good, WRONGTYPE). Once
    # the write goes through, the job waits in NS:scheduled with its cancel
    # and nothing sweeps it: due past the cancel's hour, it runs.
    r.set(f"{NS}:scheduled", "not a sorted set")
    daemon = start_jobd()
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    wait_for(lambda: "scheduling it (NS:scheduled) failed" in daemon.log_text(),
             what="the schedule write refused")
    cancel(r, "far")
    wait_for(lambda: "looking for cancelled jobs in jobd:scheduled failed" in daemon.log_text(),
             what="the sweep refused")
    r.delete(f"{NS}:scheduled")
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the job's write going through")
    rec = wait_result(r, "far", timeout=10)
    assert rec["status"] == "cancelled", rec


def test_a_sweep_page_of_a_mixed_set_stays_near_1_mib(r, redis_server, start_jobd):
    # Pages are fitted by the bytes of the page before: after a page of
    # small members the COUNT jumps (to 1000), and in a set where small and
    # large (limits.max_job_bytes) jobs are mixed the next page copies
    # everything left, here ~150 MiB, into one script call.
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 100000)
    due = now_ms() + HOURS_2
    pad = "x" * ((1 << 20) - 200)
    for start in range(0, 150, 10):
        pipe = r.pipeline(transaction=False)
        for i in range(start, start + 10):
            job = json.dumps({"id": f"big{i}", "type": "hash", "data": pad})
            pipe.zadd(f"{NS}:scheduled", {member(f"big{i}", due, job=job): due + i})
            pipe.zadd(f"{NS}:scheduled", {member(f"small{i}", due): due + i})
        pipe.execute()
    r.slowlog_reset()
    start_jobd()
    cancel(r, "none")
    wait_quiet_zscan(r)
    raw = redis.Redis(port=redis_server.port)
    worst = (0, 0)
    for entry in raw.slowlog_get(100000):
        words = entry["command"].split(b" ")
        if words[0].upper() != b"EVAL" or f"{NS}:cancels".encode() not in words:
            continue
        cursor, count = words[-3].decode(), words[-1].decode()
        _, page = raw.zscan(f"{NS}:scheduled", cursor, count=int(count))
        size = sum(len(m) for m, _ in page)
        worst = max(worst, (size, entry["duration"]))
    assert worst[0] < 20 << 20, (
        f"one sweep page copied {worst[0] >> 20} MiB into Lua ({worst[1] / 1000:.0f} ms)")


def test_a_member_due_at_inf_is_left_where_it_is(r, start_jobd):
    # A member a producer parked at +inf (or past 2^63 ms): the sweep wrote
    # its time with string.format('%d'), which in Redis's Lua 5.1 casts the
    # double to a long: -9223372036854775808, so a daemon that did not know
    # the cancel took the job as due and ran it at once. Such a member (past
    # 2^53 ms) is now left alone: it never comes due anyway.
    start_jobd(intake__streams=[f"{NS}:other"])
    r.zadd(f"{NS}:scheduled", {member("never", 0): float("inf")})
    cancel(r, "never")
    time.sleep(0.3)
    wait_quiet_zscan(r)
    (m, score), = r.zrange(f"{NS}:scheduled", 0, -1, withscores=True)
    assert score == float("inf") and "early_due" not in m, m
    assert r.xlen(f"{NS}:queue") == 0
