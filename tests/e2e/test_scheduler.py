"""The NS:scheduled mover (src/scheduler.c): due members go back to their
streams, and only to streams jobd reads."""
import json
import time

from conftest import NS, free_port, wait_for, wait_result
from test_admin import get, parse_metrics


def member(job_id, stream):
    """An NS:scheduled member as write_schedule() writes it, due now."""
    job = json.dumps({"id": job_id, "type": "sleep", "ms": 1})
    now = str(int(time.time() * 1000))
    return json.dumps({"id": job_id, "stream": stream, "job": job, "attempts": "0",
                       "queued_at": now, "due": now, "nonce": "t"}, separators=(",", ":"))


def test_a_member_naming_a_stream_jobd_does_not_read_is_dead_lettered(r, start_jobd):
    # Anyone who could write NS:scheduled could have jobd XADD to any key
    # (another application's stream, past an ACL meant for the namespace),
    # and a member naming a stream no one reads vanished there. Now only the
    # configured streams take members; any other goes to NS:dead, counted.
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    now = time.time() * 1000
    r.zadd(f"{NS}:scheduled", {member("evil", "otherapp:payments"): now,
                               member("good", f"{NS}:queue"): now})
    assert wait_result(r, "good")["status"] == "succeeded"
    wait_for(lambda: r.xlen(f"{NS}:dead") == 1, what="the dead letter")
    assert r.zcard(f"{NS}:scheduled") == 0
    assert not r.exists("otherapp:payments")
    fields = r.xrange(f"{NS}:dead")[0][1]
    assert json.loads(fields["job"])["id"] == "evil"
    error = json.loads(fields["error"])
    assert error["code"] == "forbidden", error
    assert "otherapp:payments" in error["message"], error
    assert "intake.streams" in error["message"], error
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_dead_letters_total"] == 1
