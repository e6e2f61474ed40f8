"""Redis killed and restarted under the daemon."""
import time

import pytest

from conftest import RedisServer, Jobd, NS, submit, wait_for, wait_result, wait_results


def test_reconnects_resubscribes_and_resumes(r, redis_server, start_jobd):
    daemon = start_jobd()
    redis_server.kill()
    time.sleep(1.0)
    assert daemon.proc.poll() is None
    redis_server.restart()
    daemon.wait_ready(timeout=15)
    # Stream reads resumed (the group is recreated on the empty server)...
    submit(r, {"id": "after-stream", "type": "sleep", "ms": 1})
    assert wait_result(r, "after-stream", timeout=15)["status"] == "succeeded"
    # ...and pub/sub re-subscribed.
    wait_for(lambda: r.publish(f"{NS}:jobs", '{"id":"after-pub","type":"sleep","ms":1}') == 1,
             timeout=10, interval=0.2, what="the subscriber to come back")
    assert wait_result(r, "after-pub")["status"] == "succeeded"


def test_outcomes_wait_for_redis_and_nothing_is_lost(tmp_path):
    server = RedisServer(tmp_path, appendonly=True)
    daemon = Jobd(tmp_path, server.port)
    try:
        daemon.start()
        r = server.client
        ids = [f"o{i}" for i in range(30)]
        for i in ids:
            submit(r, {"id": i, "type": "sleep", "ms": 600})
        wait_for(lambda: daemon.log_text().count("started (sleep)") >= 30, what="jobs running")
        server.kill()               # the jobs finish while Redis is away
        time.sleep(1.5)
        server.start()
        recs = wait_results(r, ids, timeout=30)
        assert all(rec["status"] == "succeeded" for rec in recs.values())
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="acks")
        assert daemon.stop() == 0
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.kill9()
        server.kill()


def test_outcomes_refused_on_a_live_connection_are_written_again(r, start_jobd):
    # Redis out of memory (noeviction) answers the outcome's MULTI/EXEC with
    # an error while the connection stays up: no reconnect will come, so
    # jobd must try again by itself once Redis takes writes.
    daemon = start_jobd()
    submit(r, {"id": "refused", "type": "sleep", "ms": 800})
    wait_for(lambda: "attempt 1 of 1 started" in daemon.log_text(), what="the job to start")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        wait_for(lambda: "will retry" in daemon.log_text(), what="the refused write")
        time.sleep(1.5)                 # retried, and refused again
        assert r.get(f"{NS}:result:refused") is None
    finally:
        r.config_set("maxmemory", 0)
    assert wait_result(r, "refused", timeout=5)["status"] == "succeeded"
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="the XACK")
    assert daemon.log_text().count("will retry") == 1   # warned once, not per retry
