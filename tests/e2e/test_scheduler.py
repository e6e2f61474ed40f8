"""The NS:scheduled mover (src/scheduler.c): due members go back to their
streams, and only to streams jobd reads."""
import json
import time

from conftest import NS, dead_entries, free_port, stats, wait_for, wait_result
from test_admin import get, parse_metrics


def member(job_id, stream):
    """An NS:scheduled member as write_schedule() writes it, due now."""
    job = json.dumps({"id": job_id, "type": "sleep", "ms": 1})
    now = str(int(time.time() * 1000))
    return json.dumps({"id": job_id, "stream": stream, "job": job, "attempts": "0",
                       "queued_at": now, "due": now, "nonce": "t"}, separators=(",", ":"))


def test_a_member_naming_a_stream_jobd_does_not_read_is_left_for_another(r, start_jobd,
                                                                       tmp_path):
    # Anyone who could write NS:scheduled could have jobd XADD to any key
    # (another application's stream, past an ACL meant for the namespace).
    # Now a daemon puts members only on its own intake.streams; a member for
    # another stream stays in NS:scheduled, looked at again 5 s later, for a
    # daemon that reads that stream (a rollout adding a stream loses nothing).
    first = start_jobd()
    now = time.time() * 1000
    r.zadd(f"{NS}:scheduled", {member("evil", "otherapp:payments"): now,
                               member("good", f"{NS}:queue"): now,
                               member("newer", f"{NS}:added"): now})
    assert wait_result(r, "good")["status"] == "succeeded"
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 2, what="the good one moved")
    time.sleep(0.5)
    assert not r.exists("otherapp:payments") and not r.exists(f"{NS}:added")
    assert not r.exists(f"{NS}:dead")
    scores = dict(r.zrange(f"{NS}:scheduled", 0, -1, withscores=True))
    assert all(score > now + 3000 for score in scores.values()), scores
    # A daemon that reads the added stream takes its member when it comes due
    # (the first one stopped: it would put the member back half the time).
    assert first.stop() == 0
    start_jobd(name="newer", intake__streams=[f"{NS}:queue", f"{NS}:added"])
    assert wait_result(r, "newer", timeout=15)["status"] == "succeeded"
    assert not r.exists("otherapp:payments")
    assert r.zcard(f"{NS}:scheduled") == 1


def test_a_due_job_its_stream_refuses_ends_failed_with_its_record(r, start_jobd):
    # A retry or delay comes due, and its stream refuses the XADD: a key of
    # another type, or ids used up by a producer's XADD with the largest id.
    # The mover dead-lettered it, and no record was ever written: a producer
    # waiting for one waited for ever. Now the job ends failed (internal)
    # with its record, event and count, beside its one dead letter.
    other = f"{NS}:other"
    r.set(other, "not a stream")
    port = free_port()
    daemon = start_jobd(intake__streams=[f"{NS}:queue", other], admin__listen=f"127.0.0.1:{port}")
    r.xadd(f"{NS}:queue", {"job": json.dumps({"id": "seed", "type": "sleep", "ms": 1})})
    wait_result(r, "seed")
    r.xadd(f"{NS}:queue", {"job": "{}"}, id="18446744073709551615-18446744073709551615")
    now = time.time() * 1000
    r.zadd(f"{NS}:scheduled", {member("full", f"{NS}:queue"): now,
                               member("wrong", other): now})
    for job_id, says in (("full", "exhausted the last possible ID"), ("wrong", "WRONGTYPE")):
        rec = wait_result(r, job_id)
        assert rec["status"] == "failed" and rec["error"]["code"] == "internal", rec
        assert "refused the job: " in rec["error"]["message"] and says in rec["error"]["message"]
        assert rec["type"] == "sleep" and rec["attempts"] == 0, rec
    dead = [f for f in dead_entries(r) if "refused the job" in f["error"]]
    assert sorted(json.loads(f["job"])["id"] for f in dead) == ["full", "wrong"]   # one each
    assert stats(r).get("sleep.failed") == 2
    # Counted once each (with the max-id entry's own, rejected: no type).
    wait_for(lambda: len(dead_entries(r)) == 3, what="the rejected entry's dead letter")
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_dead_letters_total"] == 3
    assert r.zcard(f"{NS}:scheduled") == 0
    assert daemon.proc.poll() is None
