"""Crash recovery: kill -9 of jobd mid-run, then another daemon reclaims."""
import json
import time

import pytest

from conftest import NS, Jobd, Ledger, RedisServer, submit, wait_for, wait_results


def test_kill9_then_restart_runs_every_job(r, start_jobd):
    ids = [f"k{i}" for i in range(100)]
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": 200})
    victim = start_jobd(limits__max_inflight=30, intake__visibility_timeout_ms=1000)
    wait_for(lambda: len(r.keys(f"{NS}:result:*")) >= 10, what="some results")
    victim.kill9()
    start_jobd(name="survivor", limits__max_inflight=100, intake__visibility_timeout_ms=1000)
    recs = wait_results(r, ids, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="all acked")


@pytest.mark.parametrize("case", ["reused_id", "same_entry_id_on_another_stream"])
def test_a_reclaimed_job_runs_even_when_its_id_has_a_record(r, start_jobd, case):
    """A record under a reclaimed job's id is never its own (a record and its
    entry's XACK go in one transaction): it is another job's. The reclaimed
    job was acknowledged as "already finished" and never ran: a producer
    reusing an id, or two streams' jobs with the same entry id (the default
    id), lost it."""
    streams = [f"{NS}:queue", f"{NS}:urgent"]
    for s in streams:
        r.xgroup_create(s, "jobd", id="0", mkstream=True)
    if case == "reused_id":
        job_id, entry = "nightly", "*"
        r.set(f"{NS}:result:{job_id}", json.dumps({"id": job_id, "status": "succeeded"}))
    else:
        job_id = entry = "7-0"      # no id of its own: its entry id is its id
        r.xadd(f"{NS}:queue", {"job": json.dumps({"type": "sleep", "ms": 1})}, id=entry)
    envelope = {"type": "hash", "data": "abc"}
    if case == "reused_id":
        envelope["id"] = job_id
    r.xadd(f"{NS}:urgent", {"job": json.dumps(envelope)}, id=entry)
    r.xreadgroup("jobd", "dead-consumer", {f"{NS}:urgent": ">"}, count=1)
    if case != "reused_id":
        # The other stream's job runs first and writes its record.
        r.xreadgroup("jobd", "other-consumer", {f"{NS}:queue": ">"}, count=1)
        r.xack(f"{NS}:queue", "jobd", entry)
        r.set(f"{NS}:result:{job_id}", json.dumps({"id": job_id, "type": "sleep",
                                                    "status": "succeeded"}))
    daemon = start_jobd(intake__streams=streams, intake__visibility_timeout_ms=1000)
    wait_for(lambda: json.loads(r.get(f"{NS}:result:{job_id}")).get("type") == "hash",
             timeout=15, what="the reclaimed job's own record")
    assert json.loads(r.get(f"{NS}:result:{job_id}"))["status"] == "succeeded"
    wait_for(lambda: r.xpending(f"{NS}:urgent", "jobd")["pending"] == 0, what="acknowledged")
    assert "already finished" not in daemon.log_text()


def test_redelivered_delayed_job_still_waits_for_its_time(r, start_jobd):
    """A daemon died holding a job delayed by a minute: the survivor that
    reclaims the entry schedules it for its time instead of running it."""
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    submit(r, {"id": "later", "type": "sleep", "ms": 1, "delay_ms": 60000})
    r.xreadgroup("jobd", "dead-consumer", {f"{NS}:queue": ">"}, count=1)
    daemon = start_jobd(intake__visibility_timeout_ms=1000)
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, timeout=10, what="the job to be scheduled")
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="the entry acked")
    assert r.get(f"{NS}:result:later") is None
    member = json.loads(r.zrange(f"{NS}:scheduled", 0, -1)[0])
    assert member["id"] == "later" and int(member["due"]) > time.time() * 1000 + 30000
    assert "reclaimed" in daemon.log_text()


def test_poison_entry_goes_to_dead(r, start_jobd):
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    submit(r, {"id": "poison", "type": "sleep", "ms": 1})
    for n in range(5):      # five deliveries, no outcome: five crashed consumers
        r.xreadgroup("jobd", f"crashed{n}", {f"{NS}:queue": "0" if n else ">"}, count=1)
        if n:
            r.xclaim(f"{NS}:queue", "jobd", f"crashed{n}", 0,
                     [r.xpending_range(f"{NS}:queue", "jobd", "-", "+", 1)[0]["message_id"]])
    start_jobd(intake__visibility_timeout_ms=1000)
    rec = wait_results(r, ["poison"], timeout=10)["poison"]
    assert rec["status"] == "failed" and "poison" in rec["error"]["message"]
    assert any(json.loads(d["error"])["code"] == "internal"
               for _, d in r.xrange(f"{NS}:dead"))


def test_an_outage_longer_than_the_visibility_timeout_hands_no_live_job_to_another(tmp_path):
    # Redis's idle clock runs on while Redis is away, so after an outage
    # longer than the visibility timeout every entry a live daemon holds is
    # "idle". A daemon coming up with Redis claimed them all before their
    # holder, reconnecting with backoff, could refresh them: both ran every
    # one. Now a holder refreshes all it holds as soon as it is back, and no
    # daemon claims anything in its first 6 s on a connection.
    server = RedisServer(tmp_path, appendonly=True)
    a = Jobd(tmp_path, server.port, name="a", intake__visibility_timeout_ms=2000)
    b = Jobd(tmp_path, server.port, name="b", intake__visibility_timeout_ms=2000)
    try:
        a.start()
        r = server.client
        ids = [f"long{i}" for i in range(5)]
        for i in ids:
            submit(r, {"id": i, "type": "sleep", "ms": 5000})
        wait_for(lambda: a.log_text().count("started (sleep)") >= 5, what="jobs running on a")
        server.kill()
        time.sleep(3.5)          # longer than the visibility timeout
        server.start()
        ledger = Ledger(r)
        b.start()                # a daemon that comes up with Redis
        wait_for(lambda: all(r.exists(f"{NS}:result:{i}") for i in ids), timeout=30,
                 what="every result")
        time.sleep(6)            # long enough for a second run of each to end too
        ledger.running = False
        lost, duplicated = ledger.report(ids)
        assert lost == [] and duplicated == {}, (lost, duplicated)
        assert "reclaimed" not in b.log_text()
    finally:
        for d in (a, b):
            if d.proc and d.proc.poll() is None:
                d.stop()
        server.kill()


def test_an_entry_deleted_while_pending_is_dead_lettered(r, start_jobd):
    """A dead consumer's entry deleted (XDEL, XTRIM) before it was reclaimed:
    Redis 7's XCLAIM leaves it out of its reply without a word, and it
    vanished with no record. It is now dead-lettered, logged, and no longer
    pending; the entry next to it is reclaimed and run as before."""
    queue = f"{NS}:queue"
    r.xgroup_create(queue, "jobd", id="0", mkstream=True)
    gone = submit(r, {"id": "gone", "type": "sleep", "ms": 1})
    submit(r, {"id": "kept", "type": "sleep", "ms": 1})
    r.xreadgroup("jobd", "dead-consumer", {queue: ">"}, count=2)
    r.xdel(queue, gone)
    daemon = start_jobd(intake__visibility_timeout_ms=1000)
    assert wait_results(r, ["kept"], timeout=15)["kept"]["status"] == "succeeded"
    letters = wait_for(lambda: [f for _, f in r.xrange(f"{NS}:dead")
                                if "deleted while pending" in f["error"]],
                       timeout=15, what="the deleted entry's dead letter")
    assert len(letters) == 1, letters
    message = json.loads(letters[0]["error"])["message"]
    assert gone in message and queue in message, message
    wait_for(lambda: r.xpending(queue, "jobd")["pending"] == 0, what="nothing left pending")
    log = daemon.log_text()
    assert f"WARN {queue} {gone} was deleted while pending" in log, log
