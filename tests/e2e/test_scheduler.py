"""The NS:scheduled mover (src/scheduler.c): due members go back to their
streams, and only to streams jobd reads."""
import json
import time

from conftest import NS, wait_for, wait_result


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
