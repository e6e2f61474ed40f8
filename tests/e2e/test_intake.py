"""PROTOCOL §1: both intake paths, consumer group, acknowledgement, backpressure."""
import json
import signal
import time

import pytest

from conftest import (NS, Ledger, cancel, free_port, publish, result, stats, submit, wait_for,
                      wait_result, wait_results)
from test_admin import get, parse_metrics


def test_pubsub_job_runs_with_a_generated_id(r, start_jobd):
    start_jobd()
    events = r.pubsub()
    events.subscribe(f"{NS}:events")
    assert publish(r, {"type": "sleep", "ms": 1}) == 1     # one daemon listens
    msg = wait_for(lambda: events.get_message(ignore_subscribe_messages=True, timeout=0.2),
                   what="an event")
    rec = json.loads(msg["data"])
    assert rec["status"] == "succeeded"
    assert rec["id"] and result(r, rec["id"]) == rec


def test_pattern_channel(r, start_jobd):
    start_jobd(intake__channels=[f"{NS}:jobs:*"])
    assert publish(r, {"id": "pat", "type": "sleep", "ms": 1}, channel=f"{NS}:jobs:eu") == 1
    assert wait_result(r, "pat")["status"] == "succeeded"


def test_stream_job_default_id_is_entry_id_and_is_acked(r, start_jobd):
    start_jobd()
    entry = submit(r, {"type": "sleep", "ms": 1})
    rec = wait_result(r, entry)
    assert rec["id"] == entry
    assert rec["queued_at"] == int(entry.split("-")[0])
    groups = r.xinfo_groups(f"{NS}:queue")
    assert [g["name"] for g in groups] == ["jobd"]
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="XACK")


def test_jobs_queued_before_the_daemon_started_run(r, start_jobd):
    ids = [submit(r, {"type": "sleep", "ms": 1}) for _ in range(5)]
    start_jobd()
    recs = wait_results(r, ids)
    assert all(rec["status"] == "succeeded" for rec in recs.values())


def test_several_streams(r, start_jobd):
    start_jobd(intake__streams=[f"{NS}:queue", f"{NS}:urgent"])
    a = submit(r, {"id": "s-a", "type": "sleep", "ms": 1})
    b = submit(r, {"id": "s-b", "type": "sleep", "ms": 1}, stream=f"{NS}:urgent")
    assert a and b
    wait_results(r, ["s-a", "s-b"])


def most_at_once(recs):
    """The most jobs of RECS running at any one job's start (itself included)."""
    spans = [(rec["started_at"], rec["finished_at"]) for rec in recs.values()]
    return max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)


def test_backpressure_never_more_than_max_inflight(r, start_jobd):
    start_jobd(limits__max_inflight=2)
    ids = [f"bp{i}" for i in range(10)]
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": 300})
    recs = wait_results(r, ids, timeout=30)
    assert most_at_once(recs) <= 2, recs
    spans = [(rec["started_at"], rec["finished_at"]) for rec in recs.values()]
    assert max(f for _, f in spans) - min(s for s, _ in spans) >= 5 * 300 - 50


def test_backpressure_holds_over_several_streams(r, start_jobd):
    # XREADGROUP's COUNT applies to each stream: with three streams one read
    # can bring three times the free slots. The extra jobs wait unstarted in
    # jobd (jobd_jobs_queued), so never more than max_inflight run at once.
    streams = [f"{NS}:queue", f"{NS}:urgent", f"{NS}:low"]
    ids = [f"m{i}" for i in range(12)]
    for i, job_id in enumerate(ids):
        submit(r, {"id": job_id, "type": "sleep", "ms": 300}, stream=streams[i % 3])
    port = free_port()
    start_jobd(limits__max_inflight=2, intake__streams=streams, admin__listen=f"127.0.0.1:{port}")
    queued = wait_for(lambda: parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
                      ["jobd_jobs_queued"], what="jobs queued for a slot")
    assert queued <= 4, queued      # one read: 2 from each of 3 streams, 2 of them running
    recs = wait_results(r, ids, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    assert most_at_once(recs) <= 2, recs
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_jobs_queued"] == 0 and metrics["jobd_jobs_inflight"] == 0


TWO_STREAMS = [f"{NS}:queue", f"{NS}:urgent"]


def one_running_one_queued(r, start_jobd, running, running_ms, queued):
    """max_inflight 1 and one job on each of two streams: one read brings
    both, RUNNING runs and QUEUED waits for its slot. Returns the daemon."""
    submit(r, {"id": running, "type": "sleep", "ms": running_ms}, stream=TWO_STREAMS[0])
    submit(r, {"id": queued, "type": "sleep", "ms": 10}, stream=TWO_STREAMS[1])
    daemon = start_jobd(limits__max_inflight=1, intake__streams=TWO_STREAMS)
    wait_for(lambda: "waiting for a slot" in daemon.log_text(), what="the queued job")
    return daemon


def test_a_job_queued_for_a_slot_is_cancelled_at_once(r, start_jobd):
    daemon = one_running_one_queued(r, start_jobd, "busy", 10000, "later")
    # The worker key's snapshot (refreshed every 3 s) counts it too.
    snapshot = lambda: json.loads(r.get(daemon.worker_key()) or "{}").get("jobs", {})
    wait_for(lambda: snapshot().get("queued") == 1, timeout=8, what="jobs.queued in the worker key")
    assert snapshot()["inflight"] == 2 and snapshot()["running"] == 1
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "later"}))
    rec = wait_result(r, "later", timeout=2)    # not after "busy" ends
    assert rec["status"] == "cancelled" and rec["attempts"] == 0, rec
    assert rec["error"]["message"] == "cancelled before it started"
    assert result(r, "busy") is None
    wait_for(lambda: r.xpending(TWO_STREAMS[1], "jobd")["pending"] == 0, what="XACK of later")


def test_drain_puts_jobs_queued_for_a_slot_back_at_once(r, start_jobd):
    daemon = one_running_one_queued(r, start_jobd, "running", 500, "queued")
    assert daemon.stop() == 0
    # The running job finished in the drain; the queued one never ran and is
    # back on its stream, acknowledged there, to run on the next daemon.
    assert result(r, "running")["status"] == "succeeded"
    assert result(r, "queued") is None
    assert r.xpending(TWO_STREAMS[1], "jobd")["pending"] == 0
    assert [f["id"] for _, f in r.xrange(TWO_STREAMS[1]) if "attempts" in f] == ["queued"]
    start_jobd(name="second", intake__streams=TWO_STREAMS)
    assert wait_result(r, "queued")["status"] == "succeeded"


def test_drain_requeues_jobs_waiting_for_a_slot_while_the_running_one_runs(r, start_jobd):
    # max_inflight 1 and three streams: one read brings a 30 s job from each,
    # one runs and two wait for its slot. SIGTERM must put the two waiting
    # ones back on their streams at once, not when the running one ends (30 s)
    # or when the drain runs out (60 s).
    streams = [f"{NS}:queue", f"{NS}:urgent", f"{NS}:low"]
    ids = ["first", "second", "third"]
    for job_id, stream in zip(ids, streams):
        submit(r, {"id": job_id, "type": "sleep", "ms": 30000}, stream=stream)
    port = free_port()
    daemon = start_jobd(limits__max_inflight=1, intake__streams=streams,
                        shutdown__drain_ms=60000, admin__listen=f"127.0.0.1:{port}")
    metrics = lambda: parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    wait_for(lambda: (lambda m: m["jobd_jobs_running"] == 1 and m["jobd_jobs_queued"] == 2)(
        metrics()), what="one job running and two waiting for its slot")

    def requeued():
        return {f["id"] for s in streams for _, f in r.xrange(s) if "attempts" in f}
    daemon.signal(signal.SIGTERM)
    t0 = time.monotonic()
    back = wait_for(lambda: len(requeued()) >= 2 and requeued(), timeout=10,
                    what="the two waiting jobs back on their streams")
    waited = time.monotonic() - t0
    # Still draining: the running job goes on (no result, not put back), so
    # what was put back were the two jobs that waited for its slot.
    assert daemon.proc.poll() is None, waited
    assert len(back) == 2, back
    assert not r.keys(f"{NS}:result:*")
    assert waited < 10
    # The second SIGTERM ends the drain: the running job goes back too, and
    # nothing is left pending.
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(15) == 0
    assert requeued() == set(ids)
    assert all(r.xpending(s, "jobd")["pending"] == 0 for s in streams)
    assert not r.keys(f"{NS}:result:*")


def test_pubsub_overflow_is_parked_on_the_stream(r, start_jobd):
    port = free_port()
    start_jobd(limits__max_inflight=1, admin__listen=f"127.0.0.1:{port}")
    publish(r, {"id": "first", "type": "sleep", "ms": 500})
    time.sleep(0.1)
    publish(r, {"id": "second", "type": "sleep", "ms": 1})
    # No room (the one slot is promised to the stream read or taken): both
    # wait durably on the first stream instead of in memory.
    wait_for(lambda: r.xlen(f"{NS}:queue") == 2, what="the parked jobs")
    first, second = wait_result(r, "first"), wait_result(r, "second")
    assert second["started_at"] >= first["finished_at"]
    assert first["queued_at"] < second["queued_at"]
    metrics = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics["jobd_pubsub_parked_total"] == 2


def test_outcomes_written_together_are_acked_and_counted_per_job(r, start_jobd):
    # Jobs queued before jobd starts finish in the same loop passes, so their
    # outcomes share transactions (one XACK per stream, one HINCRBY per
    # field): every entry must still be acknowledged on its own stream and
    # every outcome counted once.
    streams = [f"{NS}:queue", f"{NS}:urgent"]
    pipe = r.pipeline(transaction=False)
    for i in range(600):
        job = {"id": f"b{i}", "type": "sleep"}
        if i % 3:
            job["ms"] = 0           # every third one lacks ms: rejected
        pipe.xadd(streams[i % 2], {"job": json.dumps(job)})
    pipe.execute()
    start_jobd(intake__streams=streams)
    recs = wait_results(r, [f"b{i}" for i in range(600)], timeout=30)
    assert sum(rec["status"] == "succeeded" for rec in recs.values()) == 400
    assert sum(rec["status"] == "rejected" for rec in recs.values()) == 200
    for stream in streams:
        wait_for(lambda: r.xpending(stream, "jobd")["pending"] == 0, what=f"XACK on {stream}")
    counts = stats(r)
    assert counts["sleep.succeeded"] == 400 and counts["sleep.rejected"] == 200, counts



def _reads_while_trickling(r, jobs, gap_s):
    """Queue JOBS one at a time GAP_S apart; the XREADGROUPs jobd made."""
    r.config_resetstat()
    ids = []
    for _ in range(jobs):
        ids.append(submit(r, {"type": "sleep", "ms": 0}))
        time.sleep(gap_s)
    recs = wait_results(r, ids)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    calls = r.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0)
    return calls, recs


def test_linger_gathers_a_trickle_of_jobs_into_fewer_reads(r, start_jobd):
    # 40 jobs 5 ms apart. Without linger every job is its own read. With a
    # 100 ms linger (set by a reload) a read that came back short waits out
    # the rest of 100 ms from when it was sent: the 200 ms trickle takes a
    # handful of reads, and no job waits much longer than the linger.
    daemon = start_jobd()
    plain, _ = _reads_while_trickling(r, 40, 0.005)
    # Mostly a read a job (a daemon slowed by load may take two in one now
    # and then); in any case well above what the linger gives below.
    assert plain >= 14, plain
    daemon.settings["intake"]["linger_us"] = 100000
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    lingering, recs = _reads_while_trickling(r, 40, 0.005)
    assert lingering <= 8, lingering
    waited = [rec["started_at"] - rec["queued_at"] for rec in recs.values()]
    assert max(waited) >= 20, waited        # some did wait for the linger
    assert max(waited) <= 100 + 150, waited
    # SIGTERM while a linger is pending: the daemon drains and exits at once.
    submit(r, {"id": "last", "type": "sleep", "ms": 0})
    submit(r, {"id": "after-last", "type": "sleep", "ms": 0})
    wait_result(r, "after-last")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2


def test_a_pattern_over_jobds_own_channels_takes_no_records_as_jobs(r, start_jobd):
    # intake.channels = ["NS:*"] also matches NS:events (every result record)
    # and the heartbeat channels. A record read back as a job would be
    # rejected, overwrite the real result and publish again, for ever.
    start_jobd(intake__channels=[f"{NS}:*"])
    start_jobd(name="second", intake__channels=[f"{NS}:*"])   # its heartbeats too
    submit(r, {"id": "p1", "type": "sleep", "ms": 1})     # one of them runs it
    assert wait_result(r, "p1")["status"] == "succeeded"
    time.sleep(3)       # a heartbeat round of both daemons
    assert result(r, "p1")["status"] == "succeeded"
    counts = stats(r)
    assert counts.get("sleep.succeeded") == 1 and not any("rejected" in k for k in counts), counts


def test_a_stream_entry_id_in_the_future_does_not_delay_later_jobs(r, start_jobd):
    # A producer may XADD with an explicit id. One in the year 2100 makes
    # Redis give every later "*" entry of that stream the same time, and
    # queue times came from entry ids: a delay_ms job was parked until 2100,
    # with no result. A queue time after now is now taken as now.
    start_jobd()
    far = 4102444800000
    r.xadd(f"{NS}:queue", {"job": json.dumps({"id": "evil", "type": "sleep", "ms": 1})},
           id=f"{far}-0")
    submit(r, {"id": "honest", "type": "sleep", "ms": 1, "delay_ms": 300})
    rec = wait_result(r, "honest", timeout=10)
    now = time.time() * 1000
    assert rec["status"] == "succeeded"
    assert rec["queued_at"] <= now and rec["started_at"] - rec["queued_at"] >= 300, rec
    assert wait_result(r, "evil")["queued_at"] <= now


def test_a_destroyed_group_is_made_again_without_replaying_history(r, start_jobd):
    # XGROUP DESTROY while jobd runs (an operator clearing stuck entries):
    # jobd made the group again at id 0, and every entry ever queued (jobd
    # never trims its streams), acknowledged long ago, ran again. It is now
    # made again after the last entry read; what is queued after still runs.
    start_jobd()
    ids = [f"h{i}" for i in range(10)]
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": 1})
    wait_results(r, ids)
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="acks")
    ledger = Ledger(r)
    time.sleep(0.3)
    r.xgroup_destroy(f"{NS}:queue", "jobd")
    submit(r, {"id": "after", "type": "sleep", "ms": 1})     # queued before it is made again
    assert wait_result(r, "after")["status"] == "succeeded"
    submit(r, {"id": "later", "type": "sleep", "ms": 1})
    assert wait_result(r, "later")["status"] == "succeeded"
    time.sleep(1)
    ledger.running = False
    assert sorted(ledger.records) == ["after", "later"], sorted(ledger.records)


def unreadable_gauge(port):
    return parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])["jobd_streams_unreadable"]


def test_a_stream_key_of_another_type_does_not_stop_the_other_streams(r, start_jobd):
    # One read names every stream, and Redis fails it whole for one key that
    # is not a stream: no stream was read at all. Such a stream is now left
    # out of the reads, said once, and read again once it is repaired.
    urgent = f"{NS}:urgent"
    r.set(urgent, "not a stream")
    port = free_port()
    daemon = start_jobd(intake__streams=[f"{NS}:queue", urgent],
                        admin__listen=f"127.0.0.1:{port}")
    submit(r, {"id": "fine", "type": "sleep", "ms": 1})
    assert wait_result(r, "fine")["status"] == "succeeded"
    assert f"stream {urgent} cannot be read: XGROUP CREATE: WRONGTYPE" in daemon.log_text()
    assert unreadable_gauge(port) == 1
    r.delete(urgent)
    submit(r, {"id": "repaired", "type": "sleep", "ms": 1}, stream=urgent)
    assert wait_result(r, "repaired", timeout=15)["status"] == "succeeded"
    assert f"stream {urgent} can be read again" in daemon.log_text()
    assert unreadable_gauge(port) == 0
    assert daemon.log_text().count("cannot be read") == 1      # said once, not every recheck


def test_a_stream_replaced_by_another_type_while_read_is_left_out(r, start_jobd):
    urgent = f"{NS}:urgent"
    daemon = start_jobd(intake__streams=[f"{NS}:queue", urgent])
    submit(r, {"id": "before", "type": "sleep", "ms": 1}, stream=urgent)
    wait_result(r, "before")
    r.delete(urgent)
    r.set(urgent, "not a stream")
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_result(r, "after", timeout=15)["status"] == "succeeded"
    log = daemon.log_text()
    assert f"stream {urgent} cannot be read" in log
    # The failed reads are not repeated every second for ever.
    wrongtype_reads = log.count("XREADGROUP: WRONGTYPE")
    time.sleep(2.5)
    assert daemon.log_text().count("XREADGROUP: WRONGTYPE") == wrongtype_reads


def test_pubsub_jobs_are_parked_and_retried_on_the_first_readable_stream(r, start_jobd):
    # The first stream is where pub/sub jobs are parked and put back for a
    # retry. When it is a key of another type, they go to the next readable
    # one: parked there, a job was refused and held in memory; put back
    # there, a retry went to the dead letters.
    queue, urgent = f"{NS}:queue", f"{NS}:urgent"
    r.set(queue, "not a stream")
    start_jobd(intake__streams=[queue, urgent], limits__max_inflight=1, http__allow_private=True)
    publish(r, {"id": "long", "type": "sleep", "ms": 300})
    time.sleep(0.1)
    publish(r, {"id": "parked", "type": "sleep", "ms": 1})
    publish(r, {"id": "retried", "type": "http", "url": f"http://127.0.0.1:{free_port()}/",
                "retry": {"attempts": 2, "delay_ms": 50}})
    assert wait_result(r, "parked")["status"] == "succeeded"
    rec = wait_result(r, "retried")
    assert (rec["status"], rec["attempts"]) == ("failed", 2), rec
    assert {f.get("id") or json.loads(f["job"])["id"] for _, f in r.xrange(urgent)} >= \
        {"parked", "retried"}
    assert r.type(queue) == "string"
    assert not [f for _, f in r.xrange(f"{NS}:dead") if "refused the job" in f["error"]]


def test_a_user_that_may_not_run_xgroup_reads_the_groups_an_admin_made(r, start_jobd):
    # NOPERM for the XGROUP command is not about the stream: a
    # least-privilege user whose groups are made by an admin must still read.
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    r.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "~*", "&*", "+@all", "-xgroup")
    daemon = start_jobd(redis__username="worker", redis__password="pw")
    submit(r, {"id": "a", "type": "sleep", "ms": 1})
    assert wait_result(r, "a")["status"] == "succeeded"
    assert "cannot be read" not in daemon.log_text()


def test_a_put_back_its_stream_refuses_during_the_drain_goes_to_another(r, start_jobd):
    # The first stream is replaced by a key of another type during the
    # drain: the running pub/sub job's put-back XADD is refused inside the
    # transaction. That stream is then left out of put-backs too, and the
    # job goes back on the next readable stream instead of being refused
    # every second until the drain gives up (exit 1, the job lost).
    queue, urgent = f"{NS}:queue", f"{NS}:urgent"
    daemon = start_jobd(intake__streams=[queue, urgent], shutdown__drain_ms=500)
    publish(r, {"id": "ps", "type": "sleep", "ms": 60000})
    wait_for(lambda: "job ps: attempt 1" in daemon.log_text(), what="ps to start")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: ": draining 1 job(s)" in daemon.log_text(), what="the drain")
    r.delete(queue)
    r.set(queue, "not a stream")
    assert daemon.proc.wait(30) == 0, daemon.log_text()
    assert [json.loads(f["job"])["id"] for _, f in r.xrange(urgent)] == ["ps"]
    assert f"stream {queue} cannot be read: XADD: WRONGTYPE" in daemon.log_text()


def test_a_redis_that_refuses_writes_is_not_probed_stream_by_stream(r, start_jobd):
    # READONLY (a failover made this Redis a replica) fails every read, but it
    # is not about one stream: only WRONGTYPE or NOPERM on a key starts the
    # stream-by-stream probe, whose XGROUP CREATE warnings, one per stream,
    # came every second on top of the read's own.
    streams = [f"{NS}:s{i}" for i in range(4)]
    daemon = start_jobd(intake__streams=streams)
    r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        # (Becoming a replica ends the blocked read: the reconnect asks for
        # each group once, which is expected.)
        wait_for(lambda: daemon.log_text().count("XREADGROUP: READONLY") >= 2, timeout=15,
                 what="two refused reads")
        asked = daemon.log_text().count("XGROUP CREATE")
        wait_for(lambda: daemon.log_text().count("XREADGROUP: READONLY") >= 5, timeout=15,
                 what="three more refused reads")
        assert daemon.log_text().count("XGROUP CREATE") == asked
    finally:
        r.execute_command("REPLICAOF", "NO", "ONE")
    submit(r, {"id": "after", "type": "sleep", "ms": 1}, stream=streams[2])
    assert wait_result(r, "after")["status"] == "succeeded"


def test_a_field_name_with_a_nul_byte_is_not_the_job_field(r, start_jobd):
    # Field names were compared as C strings: "job\0x" counted as "job", and
    # its envelope ran. Such an entry has no "job" field: rejected.
    start_jobd()
    r.xadd(f"{NS}:queue", {b"job\x00x": json.dumps({"id": "nul-field", "type": "sleep", "ms": 1}),
                           "id": "nul-field"})
    rec = wait_result(r, "nul-field")
    assert rec["status"] == "rejected", rec
    assert rec["error"]["message"] == 'stream entry has no "job" field', rec
    assert [json.loads(f["error"])["code"] for _, f in r.xrange(f"{NS}:dead")] == ["invalid_job"]


@pytest.mark.parametrize("refused", ["a job channel", "jobd's own channels"])
def test_a_channel_redis_refuses_to_subscribe_to_is_said_once_and_left_out(r, start_jobd, refused):
    # An ACL user without some channel (Redis 7's acl-pubsub-default is
    # resetchannels). Redis answers that SUBSCRIBE with NOPERM, and hiredis
    # 0.14.1, with no callback for an error there, drops the subscriber
    # connection: every reconnect sent the same SUBSCRIBE, a warn line each
    # backoff round for ever, and the subscriptions were never all
    # confirmed, so the daemon never said ready (no worker key, no READY=1)
    # and the other channels were never heard for long. Now the refused
    # channel is said once at error level, counted in jobd_channels_refused
    # and left out; the others are subscribed on the next connection.
    if refused == "a job channel":
        allowed, channels, said = [f"&{NS}:*"], ["other:jobs", f"{NS}:jobs"], ["other:jobs"]
    else:   # neither NS:control nor the heartbeat channel: two rounds
        allowed, channels = [f"&{NS}:jobs", f"&{NS}:events"], [f"{NS}:jobs"]
        said = [f"{NS}:control", f"{NS}:heartbeat:"]
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", "~*", "resetchannels", *allowed,
                      "+@all")
    submit(r, {"id": "early", "type": "sleep", "ms": 1})
    port = free_port()
    daemon = start_jobd(redis__username="u", redis__password="pw", intake__channels=channels,
                        admin__listen=f"127.0.0.1:{port}")     # waits for ready
    assert wait_result(r, "early")["status"] == "succeeded"
    assert publish(r, {"id": "heard", "type": "sleep", "ms": 1}) == 1
    assert wait_result(r, "heard")["status"] == "succeeded"
    if refused == "a job channel":
        assert publish(r, {"id": "unheard", "type": "sleep", "ms": 1}, channel="other:jobs") == 0
    metrics = lambda: parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert metrics()["jobd_channels_refused"] == len(said)
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    # Quiet from then on: no reconnect loop, and (its heartbeat channel
    # refused) no heartbeat the subscriber cannot hear resets it.
    time.sleep(7 if refused != "a job channel" else 2)
    # A new subscriber connection leaves the refused channels out at once.
    r.execute_command("CLIENT", "KILL", "USER", "u")
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_result(r, "after")["status"] == "succeeded"
    wait_for(lambda: metrics()["jobd_redis_connected{connection=\"subscriber\"}"] == 1,
             what="the subscriber back")
    assert publish(r, {"id": "heard2", "type": "sleep", "ms": 1}) == 1
    assert wait_result(r, "heard2")["status"] == "succeeded"
    log = daemon.log_text()
    for channel in said:
        assert log.count(f"ERROR redis refused to subscribe to {channel}") == 1, log
    assert log.count("redis subscriber connection lost: NOPERM") == len(said), log
    assert "did not hear its heartbeat" not in log
    assert daemon.stop() == 0
    assert "did not confirm its UNSUBSCRIBE" not in daemon.log_text()


def refused_setup(r, start_jobd, allowed, channels):
    """An ACL user u allowed ALLOWED channels, and a daemon on it subscribing
    CHANNELS; returns the daemon and a reader of its /metrics."""
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", "~*", "resetchannels", *allowed,
                      "+@all")
    port = free_port()
    daemon = start_jobd(redis__username="u", redis__password="pw", intake__channels=channels,
                        admin__listen=f"127.0.0.1:{port}")     # waits for ready
    return daemon, lambda: parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])


def test_a_reload_subscribes_to_a_refused_job_channel_once_redis_allows_it(r, start_jobd):
    # Refused channels were asked about again only at a restart (a drain, on
    # a busy daemon). An operator who fixes the ACL now sends SIGHUP.
    daemon, metrics = refused_setup(r, start_jobd, [f"&{NS}:*"], ["other:jobs", f"{NS}:jobs"])
    assert metrics()["jobd_channels_refused"] == 1
    assert publish(r, {"id": "unheard", "type": "sleep", "ms": 1}, channel="other:jobs") == 0
    r.execute_command("ACL", "SETUSER", "u", "&other:jobs")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: r.pubsub_numsub("other:jobs")[0][1] == 1, what="other:jobs subscribed")
    assert publish(r, {"id": "granted", "type": "sleep", "ms": 1}, channel="other:jobs") == 1
    assert wait_result(r, "granted")["status"] == "succeeded"
    assert metrics()["jobd_channels_refused"] == 0
    assert publish(r, {"id": "still", "type": "sleep", "ms": 1}) == 1
    assert wait_result(r, "still")["status"] == "succeeded"
    log = daemon.log_text()
    assert "redis now lets jobd subscribe to other:jobs" in log, log
    # Asked without a NOPERM on the live connection: the subscriber stayed.
    assert log.count("redis subscriber connection lost") == 1, log
    assert daemon.stop() == 0
    assert "did not confirm its UNSUBSCRIBE" not in daemon.log_text()


def test_a_reload_turns_the_heartbeat_on_again_once_redis_allows_its_channel(r, start_jobd):
    # NS:control and the heartbeat channel refused: cancels unheard, the
    # heartbeat off. Granted and reloaded: both subscribed, the heartbeat on.
    daemon, metrics = refused_setup(r, start_jobd, [f"&{NS}:jobs", f"&{NS}:events"],
                                    [f"{NS}:jobs"])
    assert metrics()["jobd_channels_refused"] == 2
    r.execute_command("ACL", "SETUSER", "u", f"&{NS}:control", f"&{NS}:heartbeat:*")
    pings = r.pubsub()
    pings.psubscribe(f"{NS}:heartbeat:*")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: r.pubsub_numsub(f"{NS}:control")[0][1] == 1, what="NS:control subscribed")
    wait_for(lambda: metrics()["jobd_channels_refused"] == 0, what="the gauge at 0")
    msg = wait_for(lambda: pings.get_message(ignore_subscribe_messages=True, timeout=0.2),
                   what="a heartbeat ping")
    assert msg["data"] == "ping"
    # A cancel published on NS:control is heard.
    assert publish(r, {"id": "long", "type": "sleep", "ms": 30000}) == 1
    time.sleep(0.3)
    assert cancel(r, "long") == 1
    assert wait_result(r, "long")["status"] == "cancelled"
    log = daemon.log_text()
    assert log.count("redis subscriber connection lost") == 2, log
    assert daemon.stop() == 0


def test_a_reload_with_an_invalid_file_still_asks_about_refused_channels(r, start_jobd):
    # Whether a channel is refused is Redis's, not a setting: a reload whose
    # file does not load keeps the running settings, but asks all the same.
    daemon, metrics = refused_setup(r, start_jobd, [f"&{NS}:*"], ["other:jobs", f"{NS}:jobs"])
    r.execute_command("ACL", "SETUSER", "u", "&other:jobs")
    daemon.write_config("intake = { batch = \"not a number\"; };\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: r.pubsub_numsub("other:jobs")[0][1] == 1, what="other:jobs subscribed")
    assert publish(r, {"id": "granted", "type": "sleep", "ms": 1}, channel="other:jobs") == 1
    assert wait_result(r, "granted")["status"] == "succeeded"
    assert metrics()["jobd_channels_refused"] == 0
    log = daemon.log_text()
    assert "is not valid; keeping the running configuration" in log, log
    assert "redis now lets jobd subscribe to other:jobs" in log, log
    assert daemon.stop() == 0


def jobd_command_connection(r, user):
    """The id of the connection of USER that is neither a subscriber nor
    reading the streams: jobd's command connection. (Waited for: the stream
    connection reads NS:cancels and makes its groups before its first
    XREADGROUP.)"""
    def others():
        ids = [c["id"] for c in r.client_list()
               if c.get("user") == user and c["cmd"] != "xreadgroup"
               and c["sub"] == "0" and c["psub"] == "0" and "P" not in c["flags"]]
        return ids if len(ids) == 1 else None
    return wait_for(others, what="one command connection")[0]


def test_a_reload_that_cannot_ask_says_so_and_the_next_one_asks(r, start_jobd):
    # The question goes on the command connection: down (here, Redis refuses
    # the user's new logins while the other connections stay), the reload
    # says it cannot ask and the channel stays left out; nothing is left
    # waiting for an answer, so the reload after it asks and subscribes.
    daemon, metrics = refused_setup(r, start_jobd, [f"&{NS}:*"], ["other:jobs", f"{NS}:jobs"])
    r.execute_command("ACL", "SETUSER", "u", "&other:jobs", "off")
    r.execute_command("CLIENT", "KILL", "ID", jobd_command_connection(r, "u"))
    wait_for(lambda: "redis command connection: WRONGPASS" in daemon.log_text(),
             what="the command connection refused")
    daemon.signal(signal.SIGHUP)
    said = ("WARN reload: could not ask redis whether jobd may now subscribe to other:jobs: "
            "the command connection is down")
    wait_for(lambda: said in daemon.log_text(), what="the reload saying it could not ask")
    assert metrics()["jobd_channels_refused"] == 1
    assert r.pubsub_numsub("other:jobs")[0][1] == 0
    # Jobs on the channels it holds still run (the subscriber stayed up);
    # their records wait for the command connection.
    assert publish(r, {"id": "meanwhile", "type": "sleep", "ms": 1}) == 1
    r.execute_command("ACL", "SETUSER", "u", "on")
    assert wait_result(r, "meanwhile", timeout=30)["status"] == "succeeded"
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: r.pubsub_numsub("other:jobs")[0][1] == 1, what="other:jobs subscribed")
    assert publish(r, {"id": "granted", "type": "sleep", "ms": 1}, channel="other:jobs") == 1
    assert wait_result(r, "granted")["status"] == "succeeded"
    assert metrics()["jobd_channels_refused"] == 0
    assert daemon.stop() == 0


@pytest.mark.parametrize("why", ["still refused", "EVAL refused"])
def test_a_reload_with_the_channel_still_refused_loses_no_job_on_the_others(r, start_jobd, why):
    # Still refused: said again, and the working subscription is not dropped
    # for it. Jobs published on the allowed channel around the reload, each
    # counted by PUBLISH, all get their records. An ACL without EVAL (the
    # question's own command): said, and the channel stays left out.
    daemon, metrics = refused_setup(r, start_jobd, [f"&{NS}:*"], ["other:jobs", f"{NS}:jobs"])
    if why == "EVAL refused":
        r.execute_command("ACL", "SETUSER", "u", "-eval")
        said = ("WARN reload: could not ask redis whether jobd may now subscribe to other:jobs: "
                "NOPERM")
    else:
        said = "ERROR reload: redis still refuses to subscribe to other:jobs"
    ids = []
    for i in range(60):
        if i == 20:
            daemon.signal(signal.SIGHUP)
        job_id = f"around{i}"
        assert publish(r, {"id": job_id, "type": "sleep", "ms": 1}) == 1, job_id
        ids.append(job_id)
        time.sleep(0.01)
    recs = wait_results(r, ids)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    wait_for(lambda: said in daemon.log_text(), what="the refusal said again")
    assert metrics()["jobd_channels_refused"] == 1
    assert publish(r, {"id": "unheard", "type": "sleep", "ms": 1}, channel="other:jobs") == 0
    log = daemon.log_text()
    assert log.count("redis subscriber connection lost") == 1, log
    assert daemon.stop() == 0
