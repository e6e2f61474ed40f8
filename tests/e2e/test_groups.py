"""PROTOCOL §3 group jobs: settle, all, timeout and cancel reaching children;
limits.max_group_children bounding the children that run at once."""
import json
import signal
import time

import pytest

from conftest import (NS, SANITIZERS, Ledger, cancel, free_port, result, submit, wait_for,
                      wait_result)
from http_server import HttpServer
from test_admin import get, parse_metrics
from test_intake import most_at_once


def outcomes(rec):
    """(status, attempts) of each child in a group's record that did not
    succeed: its error carries every child's record, in input order."""
    return [(c["status"], c["attempts"]) for c in rec["error"]["results"]]


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
    three = {"type": "sleep", "ms": 1}
    for _ in range(3):
        three = {"type": "group", "jobs": [three]}
    submit(r, dict(three, id="three"))
    assert wait_result(r, "three")["status"] == "succeeded"     # the deepest allowed
    for job_id, words in [("deep", "nest at most 3 deep"), ("many", "1..1000"),
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


def test_a_big_group_does_not_hold_back_the_jobs_submitted_after_it(r, start_jobd):
    # Two pool threads, a group of 200 hash children of ~50 ms queued first:
    # with one FIFO for the pool, a top-level hash job submitted next waited
    # for all 200 (~5 s), and so did a second, small group. Each top-level
    # job's tree now takes its turn for a thread, one task at a time.
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    metrics = metrics_of(port)
    submit(r, {"id": "cal", "type": "hash", "data": "c", "iterations": 200000})
    cal = wait_result(r, "cal")
    child_ms = max(cal["finished_at"] - cal["started_at"], 1)
    iterations = max(1000, 200000 * 50 // child_ms)    # ~50 ms of hashing
    hash_job = {"type": "hash", "data": "x", "iterations": iterations}
    submit(r, {"id": "big", "type": "group", "jobs": [hash_job] * 200})
    wait_for(lambda: metrics()["jobd_threadpool_queue_depth"] >= 190,
             what="the big group's children queued on the pool")
    submit(r, {"id": "small", "type": "group", "jobs": [hash_job] * 5})
    submit(r, dict(hash_job, id="single"))
    single = wait_result(r, "single", timeout=30)
    small = wait_result(r, "small", timeout=30)
    big_then = result(r, "big")
    big = wait_result(r, "big", timeout=120)
    assert single["status"] == small["status"] == big["status"] == "succeeded"
    assert big_then is None, "the big group ended before the jobs submitted after it"
    big_ms = big["finished_at"] - big["started_at"]
    # Behind 200 children of 2 threads a job waits ~100 children's time; its
    # turn comes after one or two of them (a small margin for a loaded host).
    assert single["finished_at"] - single["started_at"] < big_ms / 4, (single, big_ms)
    assert small["finished_at"] - small["started_at"] < big_ms / 4, (small["finished_at"], big_ms)


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


# ---- limits.max_group_children --------------------------------------------

def by_id(children):
    return {c["id"]: c for c in children}


def metrics_of(port):
    return lambda: parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])


def test_children_run_at_most_max_group_children_at_once(r, start_jobd):
    port = free_port()
    daemon = start_jobd(limits__max_group_children=3, admin__listen=f"127.0.0.1:{port}")
    metrics = metrics_of(port)
    submit(r, {"id": "g", "type": "group", "jobs": [{"type": "sleep", "ms": 300}] * 10})
    samples = []

    def done():
        samples.append(metrics())
        return result(r, "g")
    rec = wait_for(done, timeout=15, interval=0.05, what="the group's result")
    assert rec["status"] == "succeeded" and rec["result"]["succeeded"] == 10, rec
    children = rec["result"]["results"]
    assert [c["status"] for c in children] == ["succeeded"] * 10
    assert all(c["attempts"] == 1 for c in children)
    assert most_at_once(by_id(children)) == 3, children
    # Four rounds of 300 ms, the children started oldest first.
    span = max(c["finished_at"] for c in children) - min(c["started_at"] for c in children)
    assert 4 * 300 - 50 <= span < 4 * 300 + 1000, span
    starts = [c["started_at"] for c in children]
    assert starts == sorted(starts)
    # The gauges saw the bound and the waiting children, and all of it ends.
    assert max(s["jobd_group_children_running"] for s in samples) <= 3
    assert max(s["jobd_group_children_queued"] for s in samples) >= 1
    final = metrics()
    assert final["jobd_group_children_running"] == 0 and final["jobd_group_children_queued"] == 0
    assert final["jobd_max_group_children"] == 3
    jobs = json.loads(r.get(daemon.worker_key()))["jobs"]
    assert jobs["max_group_children"] == 3
    assert "group_children_running" in jobs and "group_children_queued" in jobs


def test_cancel_ends_waiting_children_at_once(r, start_jobd):
    port = free_port()
    daemon = start_jobd(limits__max_group_children=2, admin__listen=f"127.0.0.1:{port}")
    metrics = metrics_of(port)
    submit(r, {"id": "c", "type": "group", "jobs": [{"type": "sleep", "ms": 10000}] * 6})
    wait_for(lambda: metrics()["jobd_group_children_queued"] == 4, what="4 children waiting")
    t0 = time.monotonic()
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "c"}))
    rec = wait_result(r, "c", timeout=5)
    assert rec["status"] == "cancelled", rec
    assert time.monotonic() - t0 < 2
    log = daemon.log_text()
    assert log.count("started (sleep)") == 2
    assert log.count("stopped while waiting for a group child slot") == 4
    # The record says the same: every child cancelled, two after starting,
    # four never started.
    assert outcomes(rec) == [("cancelled", 1)] * 2 + [("cancelled", 0)] * 4
    final = metrics()
    assert final["jobd_group_children_running"] == 0 and final["jobd_group_children_queued"] == 0
    # Every slot came back: the next group runs two children at once.
    submit(r, {"id": "next", "type": "group", "jobs": [{"type": "sleep", "ms": 300}] * 2})
    nxt = wait_result(r, "next")
    assert nxt["status"] == "succeeded"
    assert most_at_once(by_id(nxt["result"]["results"])) == 2


def test_all_mode_failure_ends_waiting_children_unstarted(r, start_jobd):
    daemon = start_jobd(limits__max_group_children=1)
    submit(r, {"id": "a", "type": "group", "mode": "all", "jobs": [
        {"type": "sleep", "ms": 5000, "timeout_ms": 100}] + [{"type": "sleep", "ms": 10}] * 5})
    rec = wait_result(r, "a")
    assert rec["status"] == "failed" and rec["error"]["code"] == "timeout", rec
    assert "group.jobs[0]" in rec["error"]["message"]
    assert rec["finished_at"] - rec["started_at"] < 1000
    log = daemon.log_text()
    assert log.count("started (sleep)") == 1, log
    assert log.count("stopped while waiting for a group child slot") == 5
    assert outcomes(rec) == [("timed_out", 1)] + [("cancelled", 0)] * 5


def test_a_failed_group_records_what_each_child_did(r, start_jobd, tmp_path):
    # "all" mode: the first child succeeded (its result matters: it may have
    # sent a webhook), the second failed, the third never started.
    start_jobd(limits__max_group_children=1, files__root=str(tmp_path))
    submit(r, {"id": "f", "type": "group", "mode": "all", "jobs": [
        {"type": "hash", "data": "abc"}, {"type": "file", "path": "missing"},
        {"type": "sleep", "ms": 10}]})
    rec = wait_result(r, "f")
    assert rec["status"] == "failed" and rec["error"]["code"] == "io_error", rec
    assert "result" not in rec
    assert outcomes(rec) == [("succeeded", 1), ("failed", 1), ("cancelled", 0)]
    first, second, third = rec["error"]["results"]
    assert first["result"]["digest"].startswith("ba7816bf")
    assert second["error"]["code"] == "io_error"
    assert third["error"]["code"] == "cancelled" and [c["id"] for c in (first, second, third)] \
        == ["f:0", "f:1", "f:2"]
    # The dead letter keeps the error short: code and message, not the records.
    dead = json.loads(r.xrange(f"{NS}:dead")[-1][1]["error"])
    assert dead["code"] == "io_error" and "results" not in dead


def test_free_slots_go_to_waiting_groups_in_turn(r, start_jobd):
    # One slot; a big group queued first and a small one after it. The small
    # one's child gets the second or third free slot, not the sixth.
    submit(r, {"id": "big", "type": "group", "jobs": [{"type": "sleep", "ms": 200}] * 5})
    submit(r, {"id": "small", "type": "group", "jobs": [{"type": "sleep", "ms": 200}]})
    start_jobd(limits__max_group_children=1)
    big, small = wait_result(r, "big", timeout=15), wait_result(r, "small", timeout=15)
    assert big["status"] == "succeeded" and small["status"] == "succeeded"
    big_children, (small_child,) = big["result"]["results"], small["result"]["results"]
    assert most_at_once(by_id(big_children + [small_child])) == 1
    assert small_child["started_at"] <= big_children[2]["started_at"], (big, small)
    assert small["finished_at"] < big["finished_at"] - 300


def test_nested_groups_take_no_child_slot(r, start_jobd):
    # With one child slot, a group that held a slot while its children wait
    # for one would never end. Groups take none; their leaves share the one.
    start_jobd(limits__max_group_children=1)
    inner = {"type": "group", "jobs": [{"type": "sleep", "ms": 100}] * 2}
    submit(r, {"id": "n", "type": "group", "jobs": [inner, inner]})
    deep = {"type": "sleep", "ms": 100}
    for _ in range(3):
        deep = {"type": "group", "jobs": [deep, deep]}
    submit(r, dict(deep, id="deep"))
    rec = wait_result(r, "n", timeout=15)
    assert rec["status"] == "succeeded" and rec["result"]["succeeded"] == 2, rec
    groups = rec["result"]["results"]
    leaves = [c for g in groups for c in g["result"]["results"]]
    assert len(leaves) == 4 and all(c["status"] == "succeeded" for c in leaves)
    assert groups[1]["started_at"] < groups[0]["finished_at"]     # both groups ran at once
    deep_rec = wait_result(r, "deep", timeout=15)
    assert deep_rec["status"] == "succeeded" and deep_rec["result"]["succeeded"] == 2

    def leaves_of(rec):
        if rec["type"] != "group":
            return [rec]
        return [leaf for c in rec["result"]["results"] for leaf in leaves_of(c)]
    all_leaves = leaves + leaves_of(deep_rec)
    assert len(all_leaves) == 4 + 8
    # One slot for the whole daemon: the two trees' leaves never overlapped.
    assert most_at_once(by_id(all_leaves)) == 1, all_leaves


def test_group_timeout_ends_waiting_children(r, start_jobd):
    # 600 ms children, a 1 s timeout: the second child starts 400 ms before
    # the timeout and would end 200 ms after it, whatever the loop's delays.
    daemon = start_jobd(limits__max_group_children=1)
    submit(r, {"id": "t", "type": "group", "timeout_ms": 1000,
               "jobs": [{"type": "sleep", "ms": 600}] * 5})
    rec = wait_result(r, "t")
    assert rec["status"] == "timed_out" and rec["error"]["code"] == "timeout", rec
    assert 950 <= rec["finished_at"] - rec["started_at"] < 1700
    log = daemon.log_text()
    assert log.count("started (sleep)") == 2, log          # one done, one stopped
    assert log.count("stopped while waiting for a group child slot") == 3
    assert outcomes(rec) == [("succeeded", 1), ("cancelled", 1)] + [("cancelled", 0)] * 3


def test_a_child_waiting_to_retry_holds_no_slot(r, start_jobd):
    start_jobd(limits__max_group_children=1)
    submit(r, {"id": "rb", "type": "group", "jobs": [
        {"type": "sleep", "ms": 10000, "timeout_ms": 100,
         "retry": {"attempts": 2, "delay_ms": 1000, "jitter": False}},
        {"type": "sleep", "ms": 200}]})
    rec = wait_result(r, "rb")
    first, second = rec["result"]["results"]
    assert first["status"] == "timed_out" and first["attempts"] == 2, first
    assert second["status"] == "succeeded"
    # The second waited for the first's attempt, then ran in its backoff.
    assert second["started_at"] - rec["started_at"] >= 90, rec
    assert second["finished_at"] <= first["started_at"], rec


def test_sighup_raises_max_group_children(r, start_jobd):
    daemon = start_jobd(limits__max_group_children=1)
    submit(r, {"id": "h", "type": "group", "jobs": [{"type": "sleep", "ms": 1000}] * 5})
    wait_for(lambda: "job h:0: attempt 1 of 1 started" in daemon.log_text(), what="h:0")
    daemon.settings["limits"]["max_group_children"] = 10
    daemon.write_config()
    hup_ms = int(time.time() * 1000)
    daemon.signal(signal.SIGHUP)
    rec = wait_result(r, "h", timeout=10)
    assert rec["status"] == "succeeded", rec
    children = rec["result"]["results"]
    assert all(c["started_at"] >= hup_ms - 20 for c in children[1:]), (hup_ms, children)
    assert most_at_once(by_id(children)) == 5
    assert rec["finished_at"] - rec["started_at"] < 2500


def test_drain_puts_back_a_group_whose_children_wait(r, start_jobd):
    # One slot, four 500 ms children, 800 ms of drain: the waiting children
    # keep starting during the drain, then the group is stopped (its waiting
    # children with it) and goes back on its stream whole; nothing is lost.
    # (The last child starts 1.5 s after the first, so one still waits at the
    # drain's end unless SIGTERM came 700 ms late; with 300 ms children it
    # was 100 ms.)
    ledger = Ledger(r)
    submit(r, {"id": "d", "type": "group", "jobs": [{"type": "sleep", "ms": 500}] * 4})
    first = start_jobd(limits__max_group_children=1, shutdown__drain_ms=800)
    wait_for(lambda: "job d:0: attempt 1 of 1 started" in first.log_text(), what="d:0")
    assert first.stop() == 0
    log = first.log_text()
    assert "job d: stopped by shutdown; back on its stream" in log, log
    assert log.count("started (sleep)") >= 2        # waiting children started in the drain
    assert "stopped while waiting for a group child slot" in log
    assert result(r, "d") is None
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0
    # (Put back once more if the read blocked at the drain brought it back.)
    assert {f["id"] for _, f in r.xrange(f"{NS}:queue") if "attempts" in f} == {"d"}
    start_jobd(name="second", limits__max_group_children=1)
    rec = wait_result(r, "d", timeout=15)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
    assert [c["status"] for c in rec["result"]["results"]] == ["succeeded"] * 4
    lost, duplicated = ledger.report(["d"])
    assert lost == [] and duplicated == {}


# ---- never-started children, seen from outside -----------------------------
#
# A stopped group's record carries only its own outcome ("group stopped", or
# the failing child in "all" mode), not its children's records, so a child
# that never started cannot be seen in any record. What can be seen is its
# side effect: an http child that never started never reaches the server.

@pytest.fixture
def web():
    server = HttpServer()
    yield server
    server.stop()


def requested(web):
    with web.state.lock:
        return list(web.state.paths)


def test_all_mode_failure_never_sends_the_waiting_http_children(r, start_jobd, web):
    start_jobd(limits__max_group_children=1, http__allow_private=True)
    submit(r, {"id": "a", "type": "group", "mode": "all", "jobs": [
        {"type": "http", "url": web.url("/status/404?c=0")}] +
        [{"type": "http", "url": web.url(f"/bytes/1?c={i}")} for i in range(1, 6)]})
    rec = wait_result(r, "a")
    assert rec["status"] == "failed" and rec["error"]["code"] == "http_status", rec
    assert rec["attempts"] == 1 and "group.jobs[0]" in rec["error"]["message"], rec
    # The group reports only once every child has ended: any waiting child
    # that had been started would have made its request by now.
    assert requested(web) == ["/status/404?c=0"]
    time.sleep(0.5)
    assert requested(web) == ["/status/404?c=0"]


def test_cancel_never_sends_the_waiting_http_children(r, start_jobd, web):
    port = free_port()
    start_jobd(limits__max_group_children=2, http__allow_private=True,
               jobs__timeout_ms=60000, admin__listen=f"127.0.0.1:{port}")
    metrics = metrics_of(port)
    submit(r, {"id": "c", "type": "group", "jobs": [
        {"type": "http", "url": web.url(f"/delay/20000?c={i}")} for i in range(6)]})
    wait_for(lambda: len(requested(web)) == 2 and metrics()["jobd_group_children_queued"] == 4,
             what="two requests sent and four children waiting")
    first_two = sorted(requested(web))
    assert first_two == ["/delay/20000?c=0", "/delay/20000?c=1"]
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "c"}))
    rec = wait_result(r, "c", timeout=5)
    assert rec["status"] == "cancelled" and rec["error"]["code"] == "cancelled", rec
    final = metrics()
    assert final["jobd_group_children_running"] == 0 and final["jobd_group_children_queued"] == 0
    time.sleep(0.5)
    assert sorted(requested(web)) == first_two


def test_group_timeout_never_sends_the_waiting_http_children(r, start_jobd, web):
    start_jobd(limits__max_group_children=1, http__allow_private=True, jobs__timeout_ms=60000)
    submit(r, {"id": "t", "type": "group", "timeout_ms": 500, "jobs": [
        {"type": "http", "url": web.url(f"/delay/20000?c={i}")} for i in range(5)]})
    rec = wait_result(r, "t", timeout=10)
    assert rec["status"] == "timed_out" and rec["error"]["code"] == "timeout", rec
    assert rec["finished_at"] - rec["started_at"] < 5000, rec
    assert requested(web) == ["/delay/20000?c=0"]
    time.sleep(0.5)
    assert requested(web) == ["/delay/20000?c=0"]


@pytest.mark.parametrize("how", ["cancel", "timeout", "all"])
def test_a_stopped_group_queues_no_pool_task_for_its_waiting_children(r, start_jobd, tmp_path,
                                                                       how):
    # One pool thread, kept busy by four long hash jobs (1-2 s each). The
    # group's first child (a sleep) holds the one child slot; four file
    # children wait.
    # When the group is stopped, they must end unstarted: one started, even
    # to be stopped at once, would put its task in the pool queue behind the
    # hash jobs, and the group could report only once that task came back.
    # So the group's result comes while the last hash job still waits.
    (tmp_path / "f").write_text("x")
    port = free_port()
    start_jobd(threads__size=1, limits__max_group_children=1, files__root=str(tmp_path),
               admin__listen=f"127.0.0.1:{port}")
    metrics = metrics_of(port)
    for i in range(4):
        submit(r, {"id": f"busy{i}", "type": "hash", "algorithm": "sha512", "data": "x",
                   "iterations": 10000000})
    wait_for(lambda: (lambda m: m["jobd_threadpool_busy"] == 1 and
                      m["jobd_threadpool_queue_depth"] == 3)(metrics()),
             what="the pool thread busy and three hash jobs queued")
    files = [{"type": "file", "op": "read", "path": "f"}] * 4
    group = {"id": "g", "type": "group", "jobs": [{"type": "sleep", "ms": 20000}] + files}
    if how == "timeout":
        group["timeout_ms"] = 1500
    elif how == "all":
        group["mode"] = "all"
        group["jobs"][0]["timeout_ms"] = 1500
    submit(r, group)
    wait_for(lambda: (lambda m: m["jobd_group_children_running"] == 1 and
                      m["jobd_group_children_queued"] == 4)(metrics()),
             what="one child running and four waiting")
    if how == "cancel":
        r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "g"}))
    rec = wait_result(r, "g", timeout=30)
    expected = {"cancel": "cancelled", "timeout": "timed_out", "all": "failed"}[how]
    assert rec["status"] == expected, rec
    assert result(r, "busy3") is None, "the group waited for the pool"
    m = metrics()
    assert m["jobd_threadpool_queue_depth"] <= 3, m     # hash jobs only, no child's task
    assert m["jobd_group_children_running"] == 0 and m["jobd_group_children_queued"] == 0, m
    busy = [wait_result(r, f"busy{i}", timeout=60) for i in range(4)]
    assert all(b["status"] == "succeeded" for b in busy)
    # The records say the same: the group ended before the pool got through
    # the hash jobs queued ahead of any task of its children.
    assert rec["finished_at"] < busy[2]["finished_at"], (rec, busy)


def test_drain_sends_no_waiting_http_child_and_puts_the_group_back_whole(r, start_jobd, web):
    # One child slot, four 1.5 s http children, 2 s of drain: the second child
    # starts during the drain (a running group may still finish); at the
    # drain's end the group is stopped, its third and fourth children never
    # reach the server, and the group goes back on its stream whole: the next
    # daemon runs all four again.
    paths = [f"/delay/1500?c={i}" for i in range(4)]
    submit(r, {"id": "d", "type": "group", "jobs": [
        {"type": "http", "url": web.url(p)} for p in paths]})
    first = start_jobd(limits__max_group_children=1, shutdown__drain_ms=2000,
                       http__allow_private=True)
    wait_for(lambda: requested(web) == paths[:1], what="the first child's request")
    assert first.stop() == 0
    assert requested(web) == paths[:2]
    assert result(r, "d") is None
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0
    assert {f["id"] for _, f in r.xrange(f"{NS}:queue") if "attempts" in f} == {"d"}
    time.sleep(0.5)
    assert requested(web) == paths[:2]
    start_jobd(name="second", limits__max_group_children=1, http__allow_private=True)
    rec = wait_result(r, "d", timeout=20)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
    children = rec["result"]["results"]
    assert [c["status"] for c in children] == ["succeeded"] * 4, children
    assert all(c["attempts"] == 1 for c in children)
    assert requested(web) == paths[:2] + paths


def test_a_record_over_max_record_bytes_is_stored_as_too_large(r, web, start_jobd):
    # A group's record holds every child's: nothing else bounds it, and one
    # Redis refuses (or cannot take in time) used to be sent again for ever,
    # with every outcome batched behind it. Over limits.max_record_bytes it
    # is stored as failed/too_large (and dead-lettered); other jobs go on.
    daemon = start_jobd(http__allow_private=True, limits__max_record_bytes=100000)
    submit(r, {"id": "big", "type": "group", "retry": {"attempts": 1},
               "jobs": [{"type": "http", "url": web.url("/bytes/30000")} for _ in range(5)]})
    submit(r, {"id": "small", "type": "group", "jobs": [
        {"type": "http", "url": web.url("/bytes/30000")}]})
    rec = wait_result(r, "big")
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large", rec
    assert "limits.max_record_bytes (100000)" in rec["error"]["message"]
    assert "result" not in rec
    assert wait_result(r, "small")["status"] == "succeeded"
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_result(r, "after")["status"] == "succeeded"
    dead = [json.loads(f["job"]).get("id") for _, f in r.xrange(f"{NS}:dead")]
    assert dead == ["big"], dead
    # The group ends once its children's records pass the limit; a record
    # that is not a group's is checked as it is written.
    assert "stopping the group, too_large" in daemon.log_text()
    submit(r, {"id": "one", "type": "http", "url": web.url("/bytes/150000")})
    rec = wait_result(r, "one")
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large", rec
    assert "stored as too_large" in daemon.log_text()


def test_a_cancel_by_a_child_id_stops_only_that_child(r, start_jobd):
    # Children are named "<group id>:<index>" in the group's record; a cancel
    # for such an id reached nothing (children are not in the id index).
    daemon = start_jobd()
    submit(r, {"id": "s", "type": "group", "jobs": [
        {"type": "sleep", "ms": 10000}, {"type": "sleep", "ms": 300}]})
    submit(r, {"id": "a", "type": "group", "mode": "all", "jobs": [
        {"type": "sleep", "ms": 10000}, {"type": "sleep", "ms": 10000}]})
    submit(r, {"id": "n", "type": "group", "jobs": [
        {"type": "group", "jobs": [{"type": "sleep", "ms": 10000}, {"type": "sleep", "ms": 1}]},
        {"type": "sleep", "ms": 1}]})
    wait_for(lambda: "job n:0:0: attempt 1" in daemon.log_text(), what="the children to start")
    for child in ("s:0", "a:1", "n:0:0"):
        cancel(r, child)
    # settle: the others go on and the group succeeds with the cancelled one.
    rec = wait_result(r, "s")
    assert rec["status"] == "succeeded", rec
    assert [c["status"] for c in rec["result"]["results"]] == ["cancelled", "succeeded"]
    assert rec["result"]["results"][0]["error"]["message"] == "cancelled by request"
    # all: one cancelled child fails the group, which stops the rest.
    rec = wait_result(r, "a")
    assert rec["status"] == "failed" and "group.jobs[1] cancelled" in rec["error"]["message"]
    assert rec["finished_at"] - rec["started_at"] < 2000
    # nested: the inner group's first child only.
    rec = wait_result(r, "n")
    inner = rec["result"]["results"][0]["result"]["results"]
    assert [c["status"] for c in inner] == ["cancelled", "succeeded"], rec
    assert rec["finished_at"] - rec["started_at"] < 2000
    assert "job s:0: cancel requested (a group child)" in daemon.log_text()


def test_a_child_cancelled_before_its_group_starts_never_starts(r, start_jobd):
    daemon = start_jobd()
    submit(r, {"id": "d", "type": "group", "delay_ms": 1500, "jobs": [
        {"type": "sleep", "ms": 1}, {"type": "hash", "data": "x", "iterations": 10000000}]})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed group")
    cancel(r, "d:1")
    rec = wait_result(r, "d", timeout=15)
    assert rec["status"] == "succeeded", rec
    results = rec["result"]["results"]
    assert [c["status"] for c in results] == ["succeeded", "cancelled"]
    assert results[1]["error"]["message"] == "cancelled before it started"
    assert results[1]["attempts"] == 0
    # Every child cancelled in advance: the group ends at once, still settled.
    submit(r, {"id": "e", "type": "group", "delay_ms": 1000, "jobs": [{"type": "sleep", "ms": 1}]})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the second delayed group")
    cancel(r, "e:0")
    rec = wait_result(r, "e", timeout=15)
    assert [c["status"] for c in rec["result"]["results"]] == ["cancelled"], rec
    assert daemon.proc.poll() is None


def test_a_nested_group_retried_forgets_what_its_children_did_before(r, start_jobd):
    # n retries in place (a child's retry runs in this daemon). Its child m
    # failed in the first attempt, keeping its children's records; cancelled
    # by its id before the second, m ends unstarted and its record must not
    # carry the first attempt's results (they were kept on the child).
    daemon = start_jobd()
    submit(r, {"id": "g", "type": "group", "mode": "all", "jobs": [
        {"type": "group", "mode": "all",
         "retry": {"attempts": 2, "delay_ms": 1500, "jitter": False},
         "jobs": [{"type": "group", "mode": "all",
                   "jobs": [{"type": "sleep", "ms": 500, "timeout_ms": 10}]}]}]})
    wait_for(lambda: "retry in" in daemon.log_text(), what="n's first attempt failed")
    cancel(r, "g:0:0")
    rec = wait_result(r, "g", timeout=15)
    n = rec["error"]["results"][0]
    assert n["attempts"] == 2, n
    m = n["error"]["results"][0]
    assert m["status"] == "cancelled" and m["error"]["message"] == "cancelled before it started", m
    assert "results" not in m["error"], m


def test_a_cancel_of_x1_reaches_child_1_of_x_beside_a_top_level_x1(r, start_jobd):
    # README: a cancel of "x:1" reaches a top-level job of that id and child
    # 1 of a group "x". With a top-level "x:1" running, only that one was
    # cancelled; and a running top-level "x:1" that is not a group hid the
    # nested group "x:1" inside "x" from a cancel of "x:1:0".
    start_jobd()
    submit(r, {"id": "x", "type": "group", "mode": "settle", "jobs": [
        {"type": "sleep", "ms": 1500}, {"type": "sleep", "ms": 1500}]})
    submit(r, {"id": "x:1", "type": "sleep", "ms": 3000})
    submit(r, {"id": "y", "type": "group", "mode": "settle", "jobs": [
        {"type": "sleep", "ms": 1500}, {"type": "group", "jobs": [{"type": "sleep", "ms": 1500}]}]})
    submit(r, {"id": "y:1", "type": "sleep", "ms": 3000})
    time.sleep(0.5)
    cancel(r, "x:1")
    cancel(r, "y:1:0")
    assert wait_result(r, "x:1", timeout=3)["status"] == "cancelled"
    rec = wait_result(r, "x", timeout=5)
    assert [c["status"] for c in rec["result"]["results"]] == ["succeeded", "cancelled"], rec
    rec = wait_result(r, "y", timeout=5)
    assert rec["result"]["results"][1]["result"]["results"][0]["status"] == "cancelled", rec
    assert wait_result(r, "y:1", timeout=5)["status"] == "succeeded"


def peak_rss_kib(pid):
    """The process's peak resident set so far (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_children_past_max_record_bytes_end_the_group_at_once(r, start_jobd, tmp_path):
    # Children keep their results until their group reports; the group's
    # record, which holds them all, was checked against
    # limits.max_record_bytes only once built, after every child ended. The
    # group now keeps a running size of its tree's kept results and, once
    # past the limit (the record could never be stored), ends too_large at
    # once, stopping the children still running: here a sleep it would
    # otherwise wait for (until its 30 s timeout).
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.txt").write_text("x" * 40000)
    start_jobd(files__root=str(root), limits__max_record_bytes=100000)
    t0 = time.monotonic()
    submit(r, {"id": "g", "type": "group", "jobs": [{"type": "sleep", "ms": 60000}] +
               [{"type": "group", "jobs": [{"type": "file", "path": "big.txt"}] * 2}] * 2})
    rec = wait_result(r, "g", timeout=10)
    assert time.monotonic() - t0 < 5
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large", rec
    assert "limits.max_record_bytes (100000)" in rec["error"]["message"], rec
    assert "results" not in rec["error"] and "result" not in rec
    dead = [json.loads(f["job"]).get("id") for _, f in r.xrange(f"{NS}:dead")]
    assert dead == ["g"], dead
    # Below the limit, the same children succeed.
    submit(r, {"id": "fits", "type": "group",
               "jobs": [{"type": "file", "path": "big.txt"}] * 2})
    assert wait_result(r, "fits")["status"] == "succeeded"


def test_a_group_of_big_file_reads_keeps_its_memory_bounded(r, start_jobd, tmp_path):
    # 40 children reading 1 MiB each: every result was kept (40 MiB), then
    # copied per child record and once more into the group's record before
    # that was refused as too large (a 100-child group of 16 MiB reads grew
    # jobd by ~4.8 GiB). Now the group stops once its kept results pass
    # limits.max_record_bytes (2 MiB here): the children still waiting for
    # the pool never run, and memory grows by a few MiB.
    root = tmp_path / "root"
    root.mkdir()
    (root / "mib.txt").write_text("x" * (1 << 20))
    daemon = start_jobd(files__root=str(root), limits__max_record_bytes=2 << 20,
                        threads__size=2)
    before = peak_rss_kib(daemon.proc.pid)
    submit(r, {"id": "reads", "type": "group",
               "jobs": [{"type": "file", "path": "mib.txt"}] * 40})
    rec = wait_result(r, "reads")
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large", rec
    grown = peak_rss_kib(daemon.proc.pid) - before
    print(f"peak RSS grew by {grown} KiB")
    if not SANITIZERS:      # ASan's quarantine keeps freed memory resident
        assert grown < 24 << 10, grown
