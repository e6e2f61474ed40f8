"""Outcome writes an ACL refuses as they are queued in the MULTI.

Redis refuses a command already when it is queued (NOPERM for a key or a
channel the ACL user may not touch), and EXEC then runs none of the
transaction (EXECABORT). jobd writes the outcomes that end in one loop pass
in one transaction: such a refusal kept every other outcome of that pass
from ever being stored, written again together every second."""
import json
import signal
import time

import pytest

from conftest import (NS, dead_entries, free_port, publish, result, stats, submit, wait_for,
                      wait_result, wait_results)
from test_admin import get, parse_metrics
from test_redis_outage import copies_of


def pending(r, stream=f"{NS}:queue"):
    return r.xpending(stream, "jobd")["pending"]


def test_a_refused_dead_letter_keeps_only_its_own_job(r, start_jobd):
    # The user may XADD to every jobd key but NS:dead (a selector lets the
    # mover's script name it). The rejected job's dead letter is refused;
    # the delayed jobs read with it are scheduled in the same loop pass, so
    # in the same transaction. They used to be refused
    # with it for ever; now they run, and only the rejected one is kept,
    # its entry pending, until NS:dead is allowed.
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", f"~{NS}:[^d]*", "&*", "+@all",
                      f"(~{NS}:* &* +@all -xadd)")
    submit(r, {"id": "bad", "type": "no-such-type"})
    for i in range(3):
        submit(r, {"id": f"good{i}", "type": "sleep", "ms": 1, "delay_ms": 50})
    daemon = start_jobd(redis__username="u", redis__password="pw")
    recs = wait_results(r, [f"good{i}" for i in range(3)], timeout=10)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    log = daemon.log_text()
    said = "ERROR job bad: storing its result record or dead letter failed: NOPERM"
    assert log.count(said) == 1, log
    # Stored at once, not handed back to wait a second beside it.
    for i in range(3):
        assert f"job good{i}: outcome not stored yet" not in log, log
    time.sleep(1.5)                     # written again, refused again
    assert result(r, "bad") is None
    assert pending(r) == 1              # never acknowledged without its outcome
    assert daemon.log_text().count(said) == 1      # said once, at error level
    r.execute_command("ACL", "SETUSER", "u", f"~{NS}:dead")
    assert wait_results(r, ["bad"], timeout=5)["bad"]["status"] == "rejected"
    assert [f["id"] for _, f in r.xrange(f"{NS}:dead")] == ["bad"]
    wait_for(lambda: pending(r) == 0, what="the XACK of bad")
    assert stats(r) == {"sleep.succeeded": 3, "unknown.rejected": 1}
    # Each transaction's marker is deleted by the next one that runs, even
    # when one refused in between was to delete it: only the last is left.
    submit(r, {"id": "last", "type": "sleep", "ms": 1})
    wait_results(r, ["last"], timeout=5)
    assert len(r.keys(f"{NS}:txn:*")) == 1, r.keys(f"{NS}:txn:*")


def test_a_refusal_after_a_refused_write_is_still_said_at_error_level(r, start_jobd):
    # The job's first write is refused for Redis itself (NOREPLICAS: every
    # write alike, warned once as "not stored yet"), the next for its dead
    # letter (NOPERM). That refusal, the one an operator must act on, was
    # said at debug level only, since the job had been warned about once.
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", f"~{NS}:*", "&*", "+@all")
    daemon = start_jobd(redis__username="u", redis__password="pw")
    submit(r, {"id": "late", "type": "sleep", "ms": 1500, "timeout_ms": 500,
               "retry": {"attempts": 1}})
    wait_for(lambda: "job late: attempt 1" in daemon.log_text(), what="late to start")
    r.execute_command("ACL", "SETUSER", "u", "resetkeys", f"~{NS}:[^d]*",
                      f"(~{NS}:* &* +@all -xadd)")
    r.config_set("min-replicas-to-write", 1)
    try:
        wait_for(lambda: "job late: outcome not stored yet" in daemon.log_text(),
                 what="the write refused for want of replicas")
    finally:
        r.config_set("min-replicas-to-write", 0)
    said = "ERROR job late: storing its result record or dead letter failed: NOPERM"
    wait_for(lambda: said in daemon.log_text(), timeout=5, what="the NOPERM said")
    time.sleep(1.5)
    log = daemon.log_text()
    assert log.count(said) == 1, log
    # NOREPLICAS was about Redis, not the job or the marker: pinned on neither.
    assert "failed: NOREPLICAS" not in log and "refused the marker" not in log, log
    assert result(r, "late") is None and pending(r) == 1
    r.execute_command("ACL", "SETUSER", "u", f"~{NS}:dead")
    assert wait_results(r, ["late"], timeout=5)["late"]["status"] == "timed_out"
    wait_for(lambda: pending(r) == 0, what="the XACK of late")


def test_a_put_back_its_stream_refuses_as_queued_goes_elsewhere_and_others_go_back(
        r, start_jobd):
    # Draining: both jobs are stopped in one pass and put back in one
    # transaction. The user may read other:q but not XADD to it (a selector
    # without XADD), so the put-back there is refused as it is queued. That
    # aborted both, every second, until the drain gave up (exit 1). Now the
    # other job goes back at once, the stream is marked as refusing
    # put-backs, and the refused job goes back on the next one.
    other = "other:q"
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", f"~{NS}:*", "&*", "+@all",
                      f"(~{NS}:* ~other:* &* +@all -xadd)")
    daemon = start_jobd(redis__username="u", redis__password="pw",
                        intake__streams=[other, f"{NS}:queue"], shutdown__drain_ms=300)
    r.xadd(other, {"job": '{"id": "from-other", "type": "sleep", "ms": 60000}'})
    submit(r, {"id": "from-queue", "type": "sleep", "ms": 60000})
    wait_for(lambda: daemon.log_text().count("attempt 1 of 1 started") == 2, what="both to start")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0, daemon.log_text()
    log = daemon.log_text()
    assert log.count("ERROR job from-other: putting it back on a stream failed: NOPERM") == 1
    assert f"stream {other} cannot be read: XADD: NOPERM" in log
    assert "job from-queue: outcome not stored yet" not in log, log
    assert copies_of(r, "from-queue") == 1
    assert copies_of(r, "from-other") == 1          # on NS:queue instead
    assert r.xpending(other, "jobd")["pending"] == 0


def test_a_put_back_on_a_stream_whose_ids_are_used_up_ends_failed_with_a_dead_letter(r, start_jobd):
    # A producer's XADD with the largest id leaves the stream unable to take
    # any entry ("ERR The stream has exhausted the last possible ID"). The
    # drain's put-back failed as the transaction ran, beside the XACK of the job's
    # entry; it was kept and written again until the drain gave up (exit 1),
    # and the stream job and the pub/sub one were both lost. Now each ends
    # failed (internal) with its record and a dead letter keeping its
    # envelope, and the drain ends cleanly.
    daemon = start_jobd(shutdown__drain_ms=300)
    submit(r, {"id": "from-stream", "type": "sleep", "ms": 60000})
    publish(r, {"id": "from-channel", "type": "sleep", "ms": 60000})
    wait_for(lambda: daemon.log_text().count("attempt 1 of 1 started") == 2, what="both to start")
    last = "18446744073709551615-18446744073709551615"
    r.xadd(f"{NS}:queue", {"job": '{"id": "last", "type": "sleep", "ms": 1}'}, id=last)
    # Run before the drain: read by it, "last" would be put back, refused, and
    # dead-lettered too.
    assert wait_result(r, "last")["status"] == "succeeded"
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0, daemon.log_text()
    log = daemon.log_text()
    for job_id in ("from-stream", "from-channel"):
        rec = result(r, job_id)
        assert rec["status"] == "failed" and rec["error"]["code"] == "internal", rec
        assert "exhausted the last possible ID" in rec["error"]["message"], rec
        assert f"ERROR job {job_id}: stream {NS}:queue takes no more entries" in log, log
    dead = {f["id"]: f for f in dead_entries(r)}
    assert set(dead) == {"from-stream", "from-channel"}
    assert json.loads(dead["from-stream"]["job"])["ms"] == 60000     # replayable
    assert pending(r) == 0


@pytest.mark.parametrize("part", ["events", "stats"])
def test_a_refused_events_publish_or_stats_count_is_left_out(r, start_jobd, part):
    # Without &NS:events (Redis 7's acl-pubsub-default is resetchannels), or
    # without HINCRBY, no outcome at all was ever stored: each one's
    # transaction holds that PUBLISH and the HINCRBYs. Now it is said once at
    # error level, shown in the metrics and left out; the outcomes are stored.
    if part == "events":
        acl, said = ["~*", "resetchannels", f"&{NS}:[^e]*", "+@all"], \
            f"ERROR redis refused PUBLISH on {NS}:events: NOPERM"
    else:
        acl, said = ["~*", "&*", "+@all", "-hincrby"], \
            f"ERROR redis refused HINCRBY of {NS}:stats: NOPERM"
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", *acl)
    port = free_port()
    daemon = start_jobd(redis__username="u", redis__password="pw",
                        admin__listen=f"127.0.0.1:{port}")
    events = r.pubsub()
    events.subscribe(f"{NS}:events")
    for i in range(3):
        submit(r, {"id": f"j{i}", "type": "sleep", "ms": 1})
    recs = wait_results(r, ["j0", "j1", "j2"], timeout=10)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
    submit(r, {"id": "later", "type": "no-such-type"})
    assert wait_results(r, ["later"], timeout=5)["later"]["status"] == "rejected"
    assert [f["id"] for _, f in r.xrange(f"{NS}:dead")] == ["later"]
    wait_for(lambda: pending(r) == 0, what="the XACKs")
    assert daemon.log_text().count(said) == 1, daemon.log_text()
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics[f"jobd_{part}_refused"] == 1
    assert metrics["jobd_" + ("stats" if part == "events" else "events") + "_refused"] == 0
    heard = [m for m in iter(lambda: events.get_message(timeout=0.2), None)
             if m["type"] == "message"]
    if part == "events":
        assert heard == [] and stats(r) == {"sleep.succeeded": 3, "unknown.rejected": 1}
    else:
        assert len(heard) == 4 and stats(r) == {}


@pytest.mark.parametrize("part", ["events", "stats"])
def test_a_reload_tries_a_refused_events_publish_or_stats_count_again(r, start_jobd, part):
    # Left out once refused; an operator who grants it reloads (SIGHUP). A
    # reload with it still refused says so again and stores the outcomes.
    if part == "events":
        acl, grant = ["~*", "resetchannels", f"&{NS}:[^e]*", "+@all"], [f"&{NS}:events"]
        said = f"ERROR redis refused PUBLISH on {NS}:events: NOPERM"
    else:
        acl, grant = ["~*", "&*", "+@all", "-hincrby"], ["+hincrby"]
        said = f"ERROR redis refused HINCRBY of {NS}:stats: NOPERM"
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", *acl)
    port = free_port()
    daemon = start_jobd(redis__username="u", redis__password="pw",
                        admin__listen=f"127.0.0.1:{port}")

    def gauge():
        return parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])[f"jobd_{part}_refused"]

    events = r.pubsub()
    events.subscribe(f"{NS}:events")
    submit(r, {"id": "before", "type": "sleep", "ms": 1})
    assert wait_results(r, ["before"], timeout=10)["before"]["status"] == "succeeded"
    assert gauge() == 1
    # Reloaded while still refused: tried, said again, and stored without it.
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload: outcomes try" in daemon.log_text(), what="the reload")
    submit(r, {"id": "still", "type": "sleep", "ms": 1})
    assert wait_results(r, ["still"], timeout=10)["still"]["status"] == "succeeded"
    wait_for(lambda: daemon.log_text().count(said) == 2, what="the refusal said again")
    assert gauge() == 1
    # Granted and reloaded: the next outcome is published and counted.
    r.execute_command("ACL", "SETUSER", "u", *grant)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log_text().count("reload: outcomes try") == 2, what="the reload")
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_results(r, ["after"], timeout=10)["after"]["status"] == "succeeded"
    assert gauge() == 0
    assert daemon.log_text().count(said) == 2
    heard = [m for m in iter(lambda: events.get_message(timeout=0.2), None)
             if m["type"] == "message"]
    if part == "events":
        assert [json.loads(m["data"])["id"] for m in heard] == ["after"]
        assert stats(r) == {"sleep.succeeded": 3}
    else:
        assert len(heard) == 3 and stats(r) == {"sleep.succeeded": 1}
    wait_for(lambda: pending(r) == 0, what="the XACKs")
    assert daemon.stop() == 0


@pytest.mark.parametrize("refused", ["-multi", "-exec"])
def test_a_user_without_multi_or_exec_stores_no_outcome_until_allowed(r, start_jobd, refused):
    # Every outcome is stored with its acknowledgement in one MULTI/EXEC.
    # Without MULTI the commands ran one by one as they were sent and EXEC
    # failed ("without MULTI"), so the outcome was written again and again;
    # without EXEC every transaction was discarded (EXECABORT), no outcome
    # stored and nothing said of why. Now the command
    # connection asks for an empty MULTI/EXEC as it connects: refused, it
    # says why, and no outcome is stored until Redis allows it.
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", "~*", "&*", "+@all", refused)
    submit(r, {"id": "waits", "type": "sleep", "ms": 1})
    daemon = start_jobd(redis__username="u", redis__password="pw", wait=False)
    wait_for(lambda: "MULTI/EXEC refused"
             in daemon.log_text(), what="the refusal said")
    time.sleep(1.5)
    assert result(r, "waits") is None and stats(r) == {}
    r.execute_command("ACL", "SETUSER", "u", "+multi", "+exec")
    assert wait_results(r, ["waits"], timeout=20)["waits"]["status"] == "succeeded"
    time.sleep(1.5)
    assert stats(r) == {"sleep.succeeded": 1}
    wait_for(lambda: pending(r) == 0, what="the XACK")
    assert daemon.stop() == 0
