"""Cancels for jobs that wait in NS:scheduled longer than a cancel is
remembered (an hour): the sweep in src/scheduler.c makes them due now, so
that they end cancelled (PROTOCOL §5: "a waiting job never starts")."""
import json
import time

from conftest import NS, cancel, free_port, submit, wait_for, wait_result
from test_admin import get, parse_metrics
from test_jobctl import ctl

HOURS_2 = 2 * 3600 * 1000


def scheduled(r):
    """NS:scheduled as {id: (score, member)}."""
    return {json.loads(m)["id"]: (score, m)
            for m, score in r.zrange(f"{NS}:scheduled", 0, -1, withscores=True)}


def test_a_cancel_reaches_a_job_delayed_past_the_hour(r, start_jobd):
    # The job came due two hours after its cancel, which had been forgotten
    # after one: it ran.
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    submit(r, {"id": "far", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    submit(r, {"id": "kept", "type": "sleep", "ms": 1, "delay_ms": HOURS_2})
    submit(r, {"id": "soon", "type": "sleep", "ms": 1, "delay_ms": 120_000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 3, what="the delayed jobs")
    before = scheduled(r)
    cancel(r, "far")
    cancel(r, "soon")
    rec = wait_result(r, "far", timeout=10)
    assert rec["status"] == "cancelled" and "before it started" in rec["error"]["message"], rec
    wait_for(lambda: "1 cancelled job(s) in jobd:scheduled made due now" in daemon.log_text(),
             what="the sweep's log line")
    after = scheduled(r)
    # Another job keeps its time, and one due within the pull-ahead (five
    # minutes) waits for it: the cancel outlives it in memory.
    assert after == {k: before[k] for k in ("kept", "soon")}, after
    assert r.get(f"{NS}:result:soon") is None
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_cancels_made_due_total"] == 1


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
    # More members than one ZSCAN page (200), in a set past Redis's compact
    # encoding: the cancelled job is found whichever page holds it, and a
    # job of another id whose text contains `"id":"far"` is not taken for it.
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
    # memory meanwhile): it is scheduled again for its old time, not run.
    now = int(time.time() * 1000)
    due = now + HOURS_2
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    job = json.dumps({"id": "early", "type": "sleep", "ms": 1})
    r.xadd(f"{NS}:queue", {"job": job, "id": "early", "attempts": "0",
                           "queued_at": str(now), "due": str(due)})
    daemon = start_jobd()
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the job scheduled again")
    score, member = scheduled(r)["early"]
    assert score == due and json.loads(member)["due"] == str(due), member
    assert r.get(f"{NS}:result:early") is None
    assert "before its time, and not cancelled here; scheduled again" in daemon.log_text()
    # One due within the clocks' margin (SCHEDULER_EARLY_MS, 150 s) runs.
    r.xadd(f"{NS}:queue", {"job": json.dumps({"id": "late", "type": "sleep", "ms": 1}),
                           "id": "late", "attempts": "0", "queued_at": str(now),
                           "due": str(now + 60_000)})
    assert wait_result(r, "late")["status"] == "succeeded"


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
