"""PROTOCOL §3 sleep and hash, timeouts, retries and cancel."""
import hashlib
import json
import re
import signal
import time

import pytest

from conftest import (NS, dead_entries, free_port, publish, result, stats, submit, wait_for,
                      wait_result)
from test_admin import get, parse_metrics


def python_digest(data, algorithm="sha256", iterations=1):
    for _ in range(iterations):
        data = hashlib.new(algorithm, data).digest()
    return data.hex()


def test_sleep(r, start_jobd):
    start_jobd()
    submit(r, {"id": "z", "type": "sleep", "ms": 0})
    assert wait_result(r, "z")["result"] == {"slept_ms": 0}


def test_hash_equals_the_python_seed_loop(r, start_jobd):
    start_jobd()
    submit(r, {"id": "h", "type": "hash", "data": "data", "iterations": 1000})
    assert wait_result(r, "h")["result"]["digest"] == python_digest(b"data", iterations=1000)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "sha1", "blake2b512"])
@pytest.mark.parametrize("encoding,data,raw", [
    ("utf8", "héllo", "héllo".encode()),
    ("hex", "00ff10", bytes([0, 255, 16])),
    ("base64", "AAEC/w==", bytes([0, 1, 2, 255])),
])
def test_hash_algorithms_and_encodings(r, start_jobd, algorithm, encoding, data, raw):
    start_jobd()
    submit(r, {"id": "h", "type": "hash", "data": data, "encoding": encoding,
               "algorithm": algorithm, "iterations": 3})
    assert wait_result(r, "h")["result"]["digest"] == python_digest(raw, algorithm, 3)


def test_sleep_timeout(r, start_jobd):
    start_jobd()
    submit(r, {"id": "t", "type": "sleep", "ms": 5000, "timeout_ms": 200})
    rec = wait_result(r, "t")
    assert rec["status"] == "timed_out" and rec["error"]["code"] == "timeout"
    assert 200 <= rec["finished_at"] - rec["started_at"] < 1500     # not the 5 s it asked
    dead = dead_entries(r)
    assert len(dead) == 1 and json.loads(dead[0]["error"])["code"] == "timeout"


def test_long_hash_stops_promptly_on_timeout(r, start_jobd):
    start_jobd()
    submit(r, {"id": "big", "type": "hash", "data": "x", "iterations": 10000000,
               "timeout_ms": 200})
    rec = wait_result(r, "big")
    assert rec["status"] == "timed_out"
    assert rec["finished_at"] - rec["started_at"] < 400
    # The thread was freed: the next hash job runs at once.
    submit(r, {"id": "next", "type": "hash", "data": "x"})
    assert wait_result(r, "next")["status"] == "succeeded"


def test_timeout_is_retried_with_backoff(r, start_jobd):
    start_jobd()
    submit(r, {"id": "rt", "type": "sleep", "ms": 5000, "timeout_ms": 100,
               "retry": {"attempts": 3, "delay_ms": 200, "backoff": 2.0, "jitter": False}})
    rec = wait_result(r, "rt", timeout=15)
    assert rec["status"] == "timed_out" and rec["attempts"] == 3
    # Attempts: 100 ms, wait 200, 100 ms, wait 400, 100 ms.
    assert rec["finished_at"] - rec["queued_at"] >= 900
    assert stats(r)["sleep.timed_out"] == 1
    assert len(dead_entries(r)) == 1


def test_non_transient_failures_are_not_retried(r, start_jobd, tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    start_jobd(files__root=str(root))
    submit(r, {"id": "nf", "type": "file", "path": "missing", "retry": {"attempts": 5}})
    rec = wait_result(r, "nf")
    assert rec["status"] == "failed" and rec["attempts"] == 1
    assert rec["error"]["code"] == "io_error"


@pytest.mark.parametrize("job", [
    {"type": "sleep", "ms": 10000},
    {"type": "hash", "data": "x", "iterations": 10000000},
])
def test_cancel_running_job(r, start_jobd, job):
    start_jobd()
    submit(r, dict(job, id="c"))
    time.sleep(0.3)
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "c"}))
    rec = wait_result(r, "c")
    assert rec["status"] == "cancelled" and rec["error"]["code"] == "cancelled"
    assert rec["finished_at"] - rec["started_at"] < 1000


def test_cancelled_waiting_job_never_starts(r, start_jobd):
    start_jobd()
    submit(r, {"id": "w", "type": "sleep", "ms": 1, "delay_ms": 500})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "w"}))
    rec = wait_result(r, "w")
    assert rec["status"] == "cancelled" and "before it started" in rec["error"]["message"]


def test_cancels_past_the_memory_limit_push_out_only_the_oldest(r, start_jobd):
    # Cancels are remembered (for jobs not read or not due yet) up to 100,000
    # within an hour. Reaching that made the daemon forget every cancel at
    # once, so the newest, real one's job ran; now the oldest tenth goes.
    daemon = start_jobd()
    submit(r, {"id": "w", "type": "sleep", "ms": 1, "delay_ms": 6000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")

    def cancels(first, n):
        pipe = r.pipeline(transaction=False)
        for i in range(first, first + n):
            pipe.publish(f"{NS}:control", f'{{"cmd":"cancel","id":"old{i}"}}')
            if i % 10000 == 9999:
                pipe.execute()
        pipe.execute()

    cancels(0, 99990)
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "w"}))
    cancels(99990, 100)
    rec = wait_result(r, "w", timeout=30)
    assert rec["status"] == "cancelled", rec
    assert "forgetting the oldest 10000" in daemon.log_text()


def test_a_cancel_outlives_the_daemon_that_heard_it(r, start_jobd):
    # A cancel lived only in the memory of the daemons that heard it: a job
    # still waiting when they stopped ran on the next daemon (PROTOCOL §5:
    # "a waiting job never starts"). It is now kept in NS:cancels for an hour.
    first = start_jobd()
    submit(r, {"id": "w", "type": "sleep", "ms": 1, "delay_ms": 3000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "w"}))
    wait_for(lambda: r.zscore(f"{NS}:cancels", "w"), what="the cancel kept in NS:cancels")
    expires_in = r.zscore(f"{NS}:cancels", "w") - time.time() * 1000
    assert 3_590_000 < expires_in <= 3_600_000
    assert first.stop() == 0
    # Still waiting while no daemon runs: in NS:scheduled, or back on its
    # stream if the first daemon's cancel sweep made it due before it
    # stopped; either way the second daemon knows the cancel only from
    # NS:cancels.
    assert r.get(f"{NS}:result:w") is None
    second = start_jobd(name="second")
    rec = wait_result(r, "w")
    assert rec["status"] == "cancelled" and "before it started" in rec["error"]["message"], rec
    assert "1 cancel(s) read from jobd:cancels" in second.log_text()


def test_a_subscriber_that_reconnects_reads_the_cancels_it_missed(r, start_jobd):
    # A cancel published while this daemon's subscriber was away is kept in
    # NS:cancels by the daemons that heard it (written here by hand); the
    # subscriber coming back reads them. Its stream connection stays up, so
    # only the subscriber's reconnect can have read it.
    daemon = start_jobd()
    submit(r, {"id": "missed", "type": "sleep", "ms": 1, "delay_ms": 3000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    r.zadd(f"{NS}:cancels", {"missed": time.time() * 1000 + 3_600_000})
    assert r.client_kill_filter(_type="pubsub") >= 1
    rec = wait_result(r, "missed")
    assert rec["status"] == "cancelled", rec
    assert "1 cancel(s) read from jobd:cancels" in daemon.log_text()


def test_members_of_ns_cancels_are_checked(r, start_jobd):
    # Anyone who can write Redis can write NS:cancels: members that cannot
    # be job ids are skipped (and said), expired ones ignored, and one for
    # ever (+inf) kept for a year (the longest jobs.cancel_ttl allows).
    now = time.time() * 1000
    r.zadd(f"{NS}:cancels", {"has space": now + 60_000, "x" * 129: now + 60_000,
                             "fresh": now + 60_000, "expired": now - 1, "ever": float("inf")})
    submit(r, {"id": "fresh", "type": "sleep", "ms": 1})
    submit(r, {"id": "expired", "type": "sleep", "ms": 1})
    submit(r, {"id": "ever", "type": "sleep", "ms": 1})
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    assert wait_result(r, "fresh")["status"] == "cancelled"
    assert wait_result(r, "expired")["status"] == "succeeded"
    assert wait_result(r, "ever")["status"] == "cancelled"
    # Rewritten to a year in the set too: not kept for ever.
    assert r.zscore(f"{NS}:cancels", "ever") <= time.time() * 1000 + 365 * 86_400_000
    assert "1 member(s) of jobd:cancels expire more than a year from now" in daemon.log_text()
    assert "2 member(s) of jobd:cancels are not job ids; skipped" in daemon.log_text()
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_cancels_remembered"] == 2


def test_a_cancels_key_of_another_type_leaves_cancels_in_memory(r, start_jobd):
    r.set(f"{NS}:cancels", "not a sorted set")
    daemon = start_jobd()
    submit(r, {"id": "w", "type": "sleep", "ms": 1, "delay_ms": 1000})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job")
    for _ in range(3):
        r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "w"}))
    rec = wait_result(r, "w")
    assert rec["status"] == "cancelled", rec
    log = daemon.log_text()
    assert "ERROR control: reading jobd:cancels failed: WRONGTYPE" in log
    # Once at error level, not once a cancel.
    assert log.count("ERROR control: keeping a cancel in jobd:cancels failed: WRONGTYPE") == 1, log


def test_cancel_of_unknown_id_and_bad_control_messages_are_harmless(r, start_jobd):
    daemon = start_jobd()
    for msg in ['{"cmd":"cancel","id":"nobody"}', "garbage", '{"cmd":"explode"}', "{}"]:
        r.publish(f"{NS}:control", msg)
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_result(r, "after")["status"] == "succeeded"
    assert daemon.proc.poll() is None


def test_a_flood_of_junk_control_messages_does_not_flood_the_log(r, start_jobd):
    # Anyone who can publish can publish junk on NS:control: each was a warning
    # line, so a flood filled the disk. At most 10 a second are logged, and
    # how many were left out is said.
    daemon = start_jobd()
    pipe = r.pipeline(transaction=False)
    for i in range(2000):
        pipe.publish(f"{NS}:control", "garbage" if i % 2 else '{"cmd":"explode"}')
    pipe.execute()
    submit(r, {"id": "after", "type": "sleep", "ms": 1100})
    assert wait_result(r, "after")["status"] == "succeeded"
    publish_one = r.publish(f"{NS}:control", "garbage")     # a second later: the count is said
    assert publish_one == 1
    wait_for(lambda: re.search(r"control: ignored message\(s\): \d+ not logged",
                               daemon.log_text()), what="the count")
    log = daemon.log_text()
    assert log.count("control: unreadable message ignored") + \
        log.count("control: unknown command") <= 40, log[-2000:]


def test_longest_namespace_and_id_keep_the_whole_result_key(r, start_jobd):
    # 64-byte namespace + ":result:" + 128-byte id: 200 bytes of key.
    ns, job_id = "n" * 64, "i" * 127 + "z"
    start_jobd(wait=False, redis__namespace=ns, intake__streams=[f"{ns}:queue"],
               intake__channels=[f"{ns}:jobs"])
    r.xadd(f"{ns}:queue", {"job": json.dumps({"id": job_id, "type": "sleep", "ms": 0})})
    wait_for(lambda: r.exists(f"{ns}:result:{job_id}"), what="the whole result key")
    assert json.loads(r.get(f"{ns}:result:{job_id}"))["id"] == job_id


def test_a_scheduled_entry_its_stream_refuses_goes_to_dead(r, start_jobd):
    # A member naming a key of another type as its stream (a configured one:
    # the mover takes no other): the mover's XADD fails after the member
    # left the set. It must land in NS:dead, and the due job next to it
    # must still run.
    r.hset(f"{NS}:not-a-stream", "x", "1")
    bad = json.dumps({"stream": f"{NS}:not-a-stream", "job": '{"id":"lost?","type":"sleep","ms":1}',
                      "id": "lost?", "attempts": "0", "queued_at": "0", "due": "0", "nonce": "a"})
    good = json.dumps({"stream": f"{NS}:queue", "job": '{"id":"fine","type":"sleep","ms":1}',
                       "id": "fine", "attempts": "0", "queued_at": "0", "due": "0", "nonce": "b"})
    r.zadd(f"{NS}:scheduled", {bad: 1, good: 2})
    start_jobd(intake__streams=[f"{NS}:queue", f"{NS}:not-a-stream"])
    assert wait_result(r, "fine")["status"] == "succeeded"
    entries = wait_for(lambda: dead_entries(r), what="the refused entry in NS:dead")
    assert '"id":"lost?"' in entries[0]["job"] and "refused" in entries[0]["error"], entries
    assert r.zcard(f"{NS}:scheduled") == 0


def test_a_retry_redis_refuses_to_schedule_is_kept_and_written_again(r, start_jobd):
    # A command that fails as a MULTI/EXEC runs does not roll the rest back:
    # the retry's ZADD into a NS:scheduled of another type failed while the
    # entry was acknowledged beside it, and the job vanished with a warning.
    # The daemon now keeps it, says so, and writes it again until it can.
    r.set(f"{NS}:scheduled", "not a sorted set")
    daemon = start_jobd()
    submit(r, {"id": "kept", "type": "sleep", "ms": 5000, "timeout_ms": 50,
               "retry": {"attempts": 2, "delay_ms": 100, "jitter": False}})
    wait_for(lambda: "job kept: scheduling it (NS:scheduled) failed: WRONGTYPE" in daemon.log_text(),
             what="the refused retry said")
    time.sleep(1.5)     # at least one more refused write: still kept
    assert r.get(f"{NS}:result:kept") is None
    r.delete(f"{NS}:scheduled")
    rec = wait_result(r, "kept", timeout=15)
    assert (rec["status"], rec["attempts"]) == ("timed_out", 2), rec


def test_a_retry_redis_refuses_to_schedule_goes_back_on_its_stream_at_shutdown(r, start_jobd):
    # The refused retry's entry was acknowledged with it, so at shutdown it
    # lived only in the daemon: it was lost when the drain gave up. Draining,
    # an outcome that cannot be scheduled goes back on its stream instead,
    # with its time: the daemon that reads it waits for that time (it used
    # to run the retry at once, without its backoff).
    r.set(f"{NS}:scheduled", "not a sorted set")
    daemon = start_jobd(shutdown__drain_ms=500)
    submit(r, {"id": "back", "type": "sleep", "ms": 5000, "timeout_ms": 50,
               "retry": {"attempts": 2, "delay_ms": 4000, "max_delay_ms": 4000,
                         "jitter": False}})
    wait_for(lambda: "job back: scheduling it (NS:scheduled) failed" in daemon.log_text(),
             what="the refused retry")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0, daemon.log_text()
    put_back = [f for _, f in r.xrange(f"{NS}:queue") if f.get("id") == "back"]
    assert len(put_back) == 1 and put_back[0]["attempts"] == "1", put_back
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0
    due = int(put_back[0]["early_due"])
    assert due > time.time() * 1000 + 1000, put_back
    r.delete(f"{NS}:scheduled")
    second = start_jobd(name="second")
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the retry scheduled again")
    assert "scheduled again" in second.log_text()
    rec = wait_result(r, "back", timeout=15)
    assert (rec["status"], rec["attempts"]) == ("timed_out", 2), rec
    assert rec["started_at"] >= due, (rec, due)


def test_a_hash_timing_out_while_queued_behind_others_ends_at_its_timeout(r, start_jobd):
    # threads.size 1, busy with long hashes: a hash queued behind them that
    # times out (or is cancelled) was only noticed when the worker reached
    # it, holding its slot and its record until every hash ahead had run.
    # It now leaves the pool's queue at once.
    daemon = start_jobd(threads__size=1)
    for i in range(3):
        submit(r, {"id": f"long{i}", "type": "hash", "algorithm": "sha512", "data": "x",
                   "iterations": 10000000})
    wait_for(lambda: "job long2: attempt 1" in daemon.log_text(), what="the long hashes")
    submit(r, {"id": "queued", "type": "hash", "data": "x", "timeout_ms": 200})
    submit(r, {"id": "cancelled", "type": "hash", "data": "x"})
    time.sleep(0.1)
    publish(r, {"cmd": "cancel", "id": "cancelled"}, channel=f"{NS}:control")
    assert wait_result(r, "queued", timeout=3)["status"] == "timed_out"
    assert wait_result(r, "cancelled", timeout=3)["status"] == "cancelled"
    assert result(r, "long2") is None       # still behind the first: the pool was busy
