"""PROTOCOL §3 group jobs: settle, all, timeout and cancel reaching children."""
import json
import time

from conftest import NS, submit, wait_result


def test_settle_keeps_every_outcome_in_order(r, start_jobd, tmp_path):
    start_jobd(files__root=str(tmp_path))
    submit(r, {"id": "g", "type": "group", "jobs": [
        {"type": "sleep", "ms": 50},
        {"type": "hash", "data": "abc"},
        {"type": "file", "path": "missing"},
    ]})
    rec = wait_result(r, "g")
    assert rec["status"] == "succeeded"
    results = rec["result"]["results"]
    assert [c["status"] for c in results] == ["succeeded", "succeeded", "failed"]
    assert [c["id"] for c in results] == ["g:0", "g:1", "g:2"]
    assert results[1]["result"]["digest"].startswith("ba7816bf")
    assert results[2]["error"]["code"] == "io_error"
    assert rec["result"]["succeeded"] == 2 and rec["result"]["failed"] == 1


def test_all_fails_fast_and_cancels_the_rest(r, start_jobd, tmp_path):
    start_jobd(files__root=str(tmp_path))
    submit(r, {"id": "a", "type": "group", "mode": "all", "jobs": [
        {"type": "sleep", "ms": 5000},
        {"type": "file", "path": "missing"},
    ]})
    rec = wait_result(r, "a")
    assert rec["status"] == "failed" and rec["error"]["code"] == "io_error"
    assert "group.jobs[1]" in rec["error"]["message"]
    assert rec["finished_at"] - rec["started_at"] < 1000


def test_group_timeout_and_cancel_reach_nested_children(r, start_jobd):
    start_jobd()
    submit(r, {"id": "t", "type": "group", "timeout_ms": 200, "jobs": [
        {"type": "sleep", "ms": 5000},
        {"type": "group", "jobs": [{"type": "hash", "data": "x", "iterations": 10000000}]},
    ]})
    rec = wait_result(r, "t")
    assert rec["status"] == "timed_out"
    assert rec["finished_at"] - rec["started_at"] < 600
    submit(r, {"id": "c", "type": "group", "jobs": [{"type": "sleep", "ms": 5000}] * 3})
    time.sleep(0.3)
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "c"}))
    assert wait_result(r, "c")["status"] == "cancelled"


def test_child_retries_inside_the_group(r, start_jobd):
    start_jobd()
    submit(r, {"id": "cr", "type": "group", "jobs": [
        {"type": "sleep", "ms": 1000, "timeout_ms": 50,
         "retry": {"attempts": 3, "delay_ms": 10, "jitter": False}}]})
    child = wait_result(r, "cr")["result"]["results"][0]
    assert child["status"] == "timed_out" and child["attempts"] == 3


def test_group_limits(r, start_jobd):
    start_jobd()
    deep = {"type": "sleep", "ms": 1}
    for _ in range(4):
        deep = {"type": "group", "jobs": [deep]}
    submit(r, dict(deep, id="deep"))
    submit(r, {"id": "many", "type": "group", "jobs": [{"type": "sleep", "ms": 1}] * 1001})
    submit(r, {"id": "child-id", "type": "group", "jobs": [{"type": "sleep", "ms": 1, "id": "x"}]})
    submit(r, {"id": "empty", "type": "group", "jobs": []})
    for job_id, words in [("deep", "nest at most"), ("many", "1..1000"),
                          ("child-id", "takes no id"), ("empty", "1..1000")]:
        rec = wait_result(r, job_id)
        assert rec["status"] == "rejected" and words in rec["error"]["message"], rec


def test_a_big_group_of_hash_jobs_all_run_on_the_pool(r, start_jobd):
    # More pool tasks than limits.max_inflight at once (children are not
    # counted there): every one waits its turn for a thread; none is refused.
    start_jobd(limits__max_inflight=2)
    submit(r, {"id": "many", "type": "group", "jobs": [
        {"type": "hash", "data": f"d{i}", "iterations": 1000} for i in range(300)]})
    rec = wait_result(r, "many", timeout=30)
    assert rec["status"] == "succeeded", rec["result"]["results"][:2]
    assert rec["result"]["succeeded"] == 300 and rec["result"]["failed"] == 0


def test_group_stop_reaches_a_child_already_stopping(r, start_jobd, tmp_path):
    # The file child's task waits behind a hash job for the one pool thread;
    # its own timeout leaves it stopping. The group's timeout must still end
    # it for good, not let it come back timed out and wait a year to retry.
    (tmp_path / "f").write_text("x")
    start_jobd(threads__size=1, files__root=str(tmp_path))
    submit(r, {"id": "g", "type": "group", "timeout_ms": 1000, "jobs": [
        {"type": "hash", "algorithm": "sha512", "data": "x", "iterations": 10000000},
        {"type": "file", "op": "read", "path": "f", "timeout_ms": 100,
         "retry": {"attempts": 100, "delay_ms": 31536000000, "max_delay_ms": 31536000000,
                   "jitter": False}}]})
    rec = wait_result(r, "g", timeout=20)
    assert rec["status"] == "timed_out", rec
