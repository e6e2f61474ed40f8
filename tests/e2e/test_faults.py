"""Fault injection (issue: reliability): a few hundred jobs, real processes and
signals, every id checked at the end: exactly one final result or one dead
letter. Lost and duplicated jobs are counted and reported."""
import json
import random
import time

from conftest import NS, Ledger, submit, wait_for


def test_two_daemons_share_a_stream_and_one_is_killed(r, start_jobd):
    ledger = Ledger(r)
    ids = [f"j{i}" for i in range(300)]
    a = start_jobd(name="a", limits__max_inflight=40, intake__visibility_timeout_ms=1000)
    start_jobd(name="b", limits__max_inflight=40, intake__visibility_timeout_ms=1000)
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": random.randint(50, 250)})
    wait_for(lambda: len(ledger.records) >= 60, timeout=20, what="progress")
    a.kill9()
    wait_for(lambda: all(r.exists(f"{NS}:result:{i}") for i in ids), timeout=60,
             what="every result")
    lost, duplicated = ledger.report(ids)
    assert lost == []
    # kill -9 can only cost re-running jobs whose outcome the victim had not
    # stored; a stored outcome is never produced twice.
    assert duplicated == {}, duplicated
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0


def test_redis_restart_with_appendonly_loses_nothing(tmp_path):
    from conftest import Jobd, RedisServer
    server = RedisServer(tmp_path, appendonly=True)
    daemon = Jobd(tmp_path, server.port, limits__max_inflight=30)
    try:
        daemon.start()
        r = server.client
        ids = [f"a{i}" for i in range(200)]
        for i in ids[:100]:
            submit(r, {"id": i, "type": "sleep", "ms": 100})
        time.sleep(0.5)
        server.kill()
        time.sleep(1)
        server.start()
        for i in ids[100:]:
            submit(r, {"id": i, "type": "sleep", "ms": 10})
        wait_for(lambda: all(r.exists(f"{NS}:result:{i}") for i in ids), timeout=60,
                 what="every result")
        missing = [i for i in ids if not r.exists(f"{NS}:result:{i}")]
        print(f"jobs: {len(ids)}, lost: {len(missing)}")
        assert missing == []
        assert daemon.stop() == 0
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill9()
        server.kill()


def test_cancels_racing_completions(r, start_jobd):
    ledger = Ledger(r)
    start_jobd(limits__max_inflight=100)
    ids = [f"c{i}" for i in range(300)]
    for i in ids:
        submit(r, {"id": i, "type": "sleep", "ms": random.randint(0, 40)})
    for i in ids:
        r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": i}))
    wait_for(lambda: len(ledger.records) >= len(ids), timeout=30, what="every outcome")
    lost, duplicated = ledger.report(ids)
    assert lost == [] and duplicated == {}
    statuses = {recs[0]["status"] for recs in ledger.records.values()}
    assert statuses <= {"succeeded", "cancelled"}
    for i in ids:
        assert json.loads(r.get(f"{NS}:result:{i}"))["status"] == ledger.records[i][0]["status"]
