"""PROTOCOL §2 and §4: every envelope field, valid and invalid, through a real
daemon; rejected messages get a record and land in NS:dead."""
import json
import time

import pytest
import redis

from conftest import (NS, dead_entries, publish, result, stats, submit, wait_for,
                      wait_result)

INVALID = [
    ("missing-type", {"ms": 1}, "invalid_job", "type: required"),
    ("unknown-type", {"type": "teleport"}, "unknown_type", "teleport"),
    ("type-not-string", {"type": 3}, "invalid_job", "type: must be a string"),
    ("timeout-zero", {"type": "sleep", "ms": 1, "timeout_ms": 0}, "invalid_job", "timeout_ms"),
    ("timeout-negative", {"type": "sleep", "ms": 1, "timeout_ms": -5}, "invalid_job", "timeout_ms"),
    ("timeout-string", {"type": "sleep", "ms": 1, "timeout_ms": "9"}, "invalid_job", "timeout_ms"),
    ("timeout-float", {"type": "sleep", "ms": 1, "timeout_ms": 1.5}, "invalid_job", "timeout_ms"),
    ("retry-not-object", {"type": "sleep", "ms": 1, "retry": 3}, "invalid_job", "retry"),
    ("retry-attempts", {"type": "sleep", "ms": 1, "retry": {"attempts": 0}}, "invalid_job",
     "retry.attempts"),
    ("retry-unknown", {"type": "sleep", "ms": 1, "retry": {"tries": 2}}, "invalid_job",
     "retry: unknown field"),
    ("retry-backoff", {"type": "sleep", "ms": 1, "retry": {"backoff": "x"}}, "invalid_job",
     "retry.backoff"),
    ("reply-to-number", {"type": "sleep", "ms": 1, "reply_to": 7}, "invalid_job", "reply_to"),
    ("reply-to-own", {"type": "sleep", "ms": 1, "reply_to": "jobd:jobs"}, "invalid_job",
     "reply_to"),
    ("ttl-zero", {"type": "sleep", "ms": 1, "result_ttl": 0}, "invalid_job", "result_ttl"),
    ("run-at-string", {"type": "sleep", "ms": 1, "run_at": "soon"}, "invalid_job", "run_at"),
    ("delay-negative", {"type": "sleep", "ms": 1, "delay_ms": -1}, "invalid_job", "delay_ms"),
    ("unknown-field", {"type": "sleep", "ms": 1, "priority": 5}, "invalid_job",
     "unknown field \"priority\""),
    ("sleep-ms-missing", {"type": "sleep"}, "invalid_job", "sleep.ms"),
    ("hash-iterations", {"type": "hash", "data": "x", "iterations": 0}, "invalid_job",
     "hash.iterations"),
    ("hash-encoding", {"type": "hash", "data": "zz", "encoding": "hex"}, "invalid_job", "hex"),
]


@pytest.mark.parametrize("name,envelope,code,words", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_envelope_is_rejected_with_reason(r, start_jobd, name, envelope, code, words):
    start_jobd()
    envelope = dict(envelope, id=f"bad-{name}")
    submit(r, envelope)
    rec = wait_result(r, envelope["id"])
    assert rec["status"] == "rejected"
    assert rec["error"]["code"] == code
    assert words in rec["error"]["message"]
    dead = wait_for(lambda: dead_entries(r), what="a dead letter")
    assert json.loads(dead[0]["job"]) == envelope
    assert json.loads(dead[0]["error"])["code"] == code
    # Acknowledged once the rejection was stored.
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="XACK")


@pytest.mark.parametrize("bad_id", ["", "a b", "x" * 129, "a/b", "é"])
def test_invalid_id_is_rejected_without_a_result_key(r, start_jobd, bad_id):
    start_jobd()
    submit(r, {"type": "sleep", "ms": 1, "id": bad_id})
    dead = wait_for(lambda: dead_entries(r), what="a dead letter")
    assert json.loads(dead[0]["error"])["code"] == "invalid_job"
    assert "id:" in json.loads(dead[0]["error"])["message"]
    assert r.keys(f"{NS}:result:*") == []


def test_a_type_with_a_nul_byte_does_not_run(r, start_jobd):
    # Compared as a C string, "sleep\u0000junk" would run as sleep. It never
    # gets that far: jansson refuses \u0000 without JSON_ALLOW_NUL (which
    # envelope.c does not pass), so the message is not JSON, and rejected.
    start_jobd()
    submit(r, {"id": "nul-type", "type": "sleep\u0000junk", "ms": 1})
    dead = wait_for(lambda: dead_entries(r), what="a dead letter")
    error = json.loads(dead[0]["error"])
    assert error["code"] == "invalid_job" and "\\u0000 is not allowed" in error["message"], error
    assert result(r, "nul-type") is None


def test_not_json_and_not_object_go_to_dead(r, start_jobd):
    start_jobd()
    events = r.pubsub()
    events.subscribe(f"{NS}:events")
    submit(r, "{not json")
    submit(r, "[1, 2]")
    publish(r, "\x00\xff garbage")
    dead = wait_for(lambda: len(dead_entries(r)) == 3 and dead_entries(r), what="3 dead letters")
    messages = sorted(json.loads(d["error"])["message"] for d in dead)
    assert any("not JSON" in m for m in messages)
    assert any("must be a JSON object" in m for m in messages)
    assert stats(r).get("unknown.rejected") == 3
    # Each rejection is also an event, with a null id.
    records = []
    deadline = time.monotonic() + 5
    while len(records) < 3 and time.monotonic() < deadline:
        msg = events.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            records.append(json.loads(msg["data"]))
    assert [rec["status"] for rec in records] == ["rejected"] * 3
    assert all(rec["id"] is None for rec in records)


def test_rejection_message_that_is_not_utf8_keeps_its_error(r, redis_server, start_jobd):
    """An error message cut inside a character ("%.64s" of a producer's type)
    or quoting raw bytes (jansson's parse error) once made the record lose its
    "error" and the dead letter get an empty one (found by fuzz_envelope)."""
    start_jobd()
    submit(r, {"id": "cut", "type": "a" * 63 + "\u00e9"})
    rec = wait_result(r, "cut")
    assert rec["status"] == "rejected" and rec["error"]["code"] == "unknown_type"
    assert "a" * 60 + "?" in rec["error"]["message"]
    raw = redis.Redis(port=redis_server.port)       # bytes: the job is not UTF-8
    raw.xadd(f"{NS}:queue", {"job": b'{"id":"x","type":"\\u0\xd0\xa4"}'})
    dead = wait_for(lambda: len(raw.xrange(f"{NS}:dead")) == 2 and raw.xrange(f"{NS}:dead"),
                    what="2 dead letters")
    errors = [json.loads(fields[b"error"]) for _, fields in dead]
    assert [e["code"] for e in errors] == ["unknown_type", "invalid_job"]
    assert "not JSON" in errors[1]["message"]


def test_stream_entry_without_job_field_is_rejected(r, start_jobd):
    start_jobd()
    r.xadd(f"{NS}:queue", {"payload": "{}"})
    dead = wait_for(lambda: dead_entries(r), what="a dead letter")
    assert "no \"job\" field" in json.loads(dead[0]["error"])["message"]
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="XACK")


def test_oversized_message_is_rejected_and_truncated_in_dead(r, start_jobd):
    start_jobd(limits__max_job_bytes=200)
    big = json.dumps({"id": "big", "type": "hash", "data": "x" * 1000})
    submit(r, big)
    dead = wait_for(lambda: dead_entries(r), what="a dead letter")
    err = json.loads(dead[0]["error"])
    assert err["code"] == "too_large"
    assert "max_job_bytes" in err["message"]
    assert len(dead[0]["job"]) == 200 and dead[0]["truncated"] == "1"


def test_result_record_shape(r, start_jobd):
    daemon = start_jobd()
    before = int(time.time() * 1000)
    submit(r, {"id": "shape", "type": "sleep", "ms": 20})
    rec = wait_result(r, "shape")
    assert set(rec) == {"id", "type", "status", "attempts", "worker", "queued_at",
                        "started_at", "finished_at", "result"}
    assert rec["id"] == "shape" and rec["type"] == "sleep" and rec["status"] == "succeeded"
    assert rec["attempts"] == 1
    assert rec["worker"].endswith(f":{daemon.proc.pid}")
    assert before - 5 <= rec["queued_at"] <= rec["started_at"] <= rec["finished_at"]
    assert rec["finished_at"] - rec["started_at"] >= 20
    assert rec["result"] == {"slept_ms": 20}
    assert stats(r)["sleep.succeeded"] == 1


def test_all_common_fields_valid(r, start_jobd):
    start_jobd()
    reply = r.pubsub()
    reply.subscribe("client:7")
    envelope = {"id": "full.Job_1:x-y", "type": "sleep", "ms": 5, "timeout_ms": 1000,
                "retry": {"attempts": 2, "delay_ms": 10, "backoff": 1.5, "max_delay_ms": 100,
                          "jitter": True},
                "reply_to": "client:7", "result_ttl": 30}
    submit(r, envelope)
    rec = wait_result(r, envelope["id"])
    assert rec["status"] == "succeeded"
    ttl = r.ttl(f"{NS}:result:{envelope['id']}")
    assert 25 <= ttl <= 30
    msg = wait_for(lambda: reply.get_message(ignore_subscribe_messages=True, timeout=0.2),
                   what="the record on reply_to")
    assert json.loads(msg["data"]) == rec


def test_default_result_ttl(r, start_jobd):
    start_jobd(jobs__result_ttl=120)
    submit(r, {"id": "ttl", "type": "sleep", "ms": 1})
    wait_result(r, "ttl")
    assert 110 <= r.ttl(f"{NS}:result:ttl") <= 120


def test_delay_ms_and_run_at(r, start_jobd):
    start_jobd()
    now = int(time.time() * 1000)
    submit(r, {"id": "later", "type": "sleep", "ms": 1, "delay_ms": 700})
    publish(r, {"id": "at", "type": "sleep", "ms": 1, "run_at": now + 600})
    # Parked in NS:scheduled meanwhile, not in memory.
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 2, what="2 scheduled jobs")
    later = wait_result(r, "later")
    at = wait_result(r, "at")
    assert later["started_at"] >= now + 700
    assert at["started_at"] >= now + 600
    assert later["queued_at"] <= now + 50
    assert r.zcard(f"{NS}:scheduled") == 0


def test_rejected_keeps_the_valid_id(r, start_jobd):
    start_jobd()
    publish(r, {"id": "keeps-id", "type": "sleep", "ms": "soon"})
    rec = wait_result(r, "keeps-id")
    assert rec["status"] == "rejected" and rec["attempts"] == 0
    assert stats(r)["sleep.rejected"] == 1


def test_producer_text_cannot_forge_log_lines(r, start_jobd):
    # Log messages quote what producers sent (a type, a control command): a
    # newline there would start a line of its own, a forged ERROR or, under
    # journald ("<3>..."), a forged priority.
    daemon = start_jobd()
    forged = "\n2026-01-01T00:00:00.000Z ERROR forged\n<3>also forged"
    submit(r, {"id": "forge", "type": "zz" + forged})
    assert wait_result(r, "forge")["status"] == "rejected"
    r.publish(f"{NS}:control", json.dumps({"cmd": "x" + forged}))
    wait_for(lambda: 'unknown command "x' in daemon.log_text(), what="the control message logged")
    lines = daemon.log_text().splitlines()
    assert not [line for line in lines if line.startswith(("2026-01-01", "<3>"))], lines
    assert [line for line in lines if "zz" in line and "also forged" in line]


def test_a_reply_to_channel_redis_refuses_does_not_block_outcomes(r, start_jobd):
    # An ACL user allowed only some channels (Redis 7's acl-pubsub-default is
    # resetchannels): a PUBLISH to any other reply_to is refused when queued
    # in MULTI, which aborted the whole outcome transaction (EXECABORT) every
    # second for ever: no record, the entry never acknowledged, the slot held,
    # and the drain given up with exit 1. reply_to is now published once the
    # transaction has run; a refusal there is only logged.
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", "~*", "&jobd:*", "&allowed:*",
                      "+@all")
    p = r.pubsub()
    p.subscribe("allowed:r")
    d = start_jobd(redis__username="u", redis__password="pw")
    submit(r, {"id": "refused", "type": "sleep", "ms": 10, "reply_to": "client:results"})
    submit(r, {"id": "allowed", "type": "sleep", "ms": 10, "reply_to": "allowed:r"})
    assert wait_result(r, "refused", timeout=5)["status"] == "succeeded"
    assert wait_result(r, "allowed", timeout=5)["status"] == "succeeded"
    # A channel the user may publish to still gets the record.

    def replied():
        m = p.get_message(ignore_subscribe_messages=True, timeout=0.1)
        return m and json.loads(m["data"])
    assert wait_for(replied, timeout=5, what="the record on reply_to")["id"] == "allowed"
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, timeout=5,
             what="every entry acknowledged")
    assert d.stop() == 0


def test_reply_to_gets_the_stored_record_byte_for_byte(r, start_jobd):
    # The record is written once and the same text goes to NS:result:<id>,
    # NS:events and reply_to (it was written twice: once more for reply_to).
    start_jobd()
    reply = r.pubsub()
    reply.subscribe("client:bytes")
    events = r.pubsub()
    events.subscribe(f"{NS}:events")
    for channel in (reply, events):
        wait_for(lambda: channel.get_message(timeout=0.2), what="the subscription")
    submit(r, {"id": "bytes", "type": "hash", "data": "d\u00e9j\u00e0 \u2603", "iterations": 3,
               "reply_to": "client:bytes"})
    submit(r, {"id": "bytes-bad", "type": "sleep", "ms": "x", "reply_to": "client:bytes"})
    got = [wait_for(lambda: reply.get_message(timeout=0.2), what="the records on reply_to")
           for _ in range(2)]
    seen = [wait_for(lambda: events.get_message(timeout=0.2), what="the records on NS:events")
            for _ in range(2)]
    by_id = {json.loads(m["data"])["id"]: m["data"] for m in got}
    assert sorted(by_id) == ["bytes", "bytes-bad"]
    assert sorted(m["data"] for m in seen) == sorted(by_id.values())
    for job_id, text in by_id.items():
        assert r.get(f"{NS}:result:{job_id}") == text
    assert json.loads(by_id["bytes-bad"])["status"] == "rejected"
