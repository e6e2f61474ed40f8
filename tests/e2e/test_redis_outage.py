"""Redis killed and restarted under the daemon."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis

from conftest import (REPO, RedisServer, Jobd, Ledger, NS, build_preload_shim, free_port, publish,
                      stats, submit, wait_for, wait_result, wait_results)
from redis_proxy import ForwardingProxy
from test_admin import get, parse_metrics
from test_intake import unreadable_gauge


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


def refused_sends_store_nothing_then_once(r, start_jobd, tmp_path, job_id, shim_env, said, what):
    """A daemon whose hiredis refuses the commands SHIM_ENV names (send_fail_shim.c)
    while a flag file exists: JOB_ID's outcome, once the log says SAID, is
    not stored, acknowledged, published or counted, a second later neither
    (written again, refused again); with the flag gone, all of it exactly once."""
    so = build_preload_shim(tmp_path, os.path.join(REPO, "tests", "e2e", "send_fail_shim.c"))
    flag = tmp_path / "fail-sends"
    ledger = Ledger(r)
    daemon = start_jobd(env={"LD_PRELOAD": so, "SEND_FAIL_WHILE": str(flag), **shim_env})
    flag.touch()                        # once ready: the connection's own MULTI/EXEC probe goes
    submit(r, {"id": job_id, "type": "sleep", "ms": 1})
    wait_for(lambda: said in daemon.log_text(), what=what)
    time.sleep(1.5)                     # written again (every second), refused again
    assert r.get(f"{NS}:result:{job_id}") is None
    assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 1   # not acknowledged
    assert job_id not in ledger.records                         # nor published
    assert stats(r) == {}                                       # nor counted
    flag.unlink()
    assert wait_result(r, job_id)["status"] == "succeeded"
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="the XACK")
    assert stats(r) == {"sleep.succeeded": 1}
    lost, duplicated = ledger.report([job_id])
    assert lost == [] and duplicated == {}
    assert daemon.stop() == 0


def test_an_outcome_command_hiredis_cannot_take_sends_none_of_its_transaction(
        r, start_jobd, tmp_path):
    # hiredis refusing one command of an outcome transaction (out of memory:
    # here a shim refuses the record's SET) left that command out and sent
    # the rest: the EXEC acknowledged the entry without its record, and the
    # job was lost. Now the transaction is dropped with the connection (Redis
    # discards it) and its outcomes are written again until they go whole.
    refused_sends_store_nothing_then_once(
        r, start_jobd, tmp_path, "doomed", {"SEND_FAIL_MARK": "doomed"},
        "out of memory sending an outcome transaction", "the transaction dropped")


def test_an_outcome_transaction_whose_multi_cannot_be_sent_sends_nothing(
        r, start_jobd, tmp_path):
    # The MULTI's own send was not checked: refused, the outcome's commands
    # ran one by one as they came and the EXEC failed ("without MULTI"), so
    # each outcome was stored, published, counted and acknowledged, and then
    # all of it again every second. Now nothing of it is sent until the
    # MULTI goes, and the outcome is stored once.
    refused_sends_store_nothing_then_once(
        r, start_jobd, tmp_path, "held", {"SEND_FAIL_COMMAND": "MULTI"},
        "job held: outcome not stored yet", "the outcome handed back")


def test_an_outcome_transaction_whose_exec_cannot_be_sent_is_discarded_whole(
        r, start_jobd, tmp_path):
    # The MULTI and every command went, the EXEC did not: the transaction
    # stays open in Redis, where the next one's commands would join it. The
    # connection is dropped, so Redis discards it, and the outcome is written
    # again until its EXEC goes.
    refused_sends_store_nothing_then_once(
        r, start_jobd, tmp_path, "unexecuted", {"SEND_FAIL_COMMAND": "EXEC"},
        "out of memory sending an outcome transaction", "the transaction dropped")


def test_a_transaction_dropped_unsent_settles_the_ones_still_in_flight_once(
        r, start_jobd, tmp_path):
    # Dropping the command connection for a transaction hiredis could not
    # take also drops the earlier ones still waiting for their EXEC's reply
    # (Redis is paused here). Their callbacks run inside that drop; they go
    # to the markers' check, which says whether they ran once Redis answers:
    # one record each, none written twice.
    so = build_preload_shim(tmp_path, os.path.join(REPO, "tests", "e2e", "send_fail_shim.c"))
    flag = tmp_path / "fail-sends"
    ledger = Ledger(r)
    daemon = start_jobd(env={"LD_PRELOAD": so, "SEND_FAIL_WHILE": str(flag),
                             "SEND_FAIL_MARK": "doomed"})
    flag.touch()
    submit(r, {"id": "early", "type": "sleep", "ms": 400})
    submit(r, {"id": "doomed", "type": "sleep", "ms": 1000})
    wait_for(lambda: daemon.log_text().count("started (sleep)") == 2, what="both jobs running")
    r.execute_command("CLIENT", "PAUSE", 1800, "ALL")   # early's EXEC goes unanswered
    wait_for(lambda: "out of memory sending an outcome transaction" in daemon.log_text(),
             what="doomed's transaction dropped")
    time.sleep(2.0)                     # the pause is over; doomed is refused again
    assert r.get(f"{NS}:result:doomed") is None
    flag.unlink()
    # Run or not (Redis drops a paused client's commands with it), early's
    # transaction is settled by its marker, not written blind. (While doomed
    # keeps dropping the connection, the check's reply is lost with it.)
    wait_for(lambda: "1 outcome(s) sent before the connection went" in daemon.log_text(),
             what="early's transaction checked")
    assert wait_result(r, "early")["status"] == "succeeded"
    assert wait_result(r, "doomed")["status"] == "succeeded"
    wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="both XACKs")
    assert stats(r) == {"sleep.succeeded": 2}
    lost, duplicated = ledger.report(["early", "doomed"])
    assert lost == [] and duplicated == {}
    assert daemon.stop() == 0


def test_outcomes_refused_on_a_live_connection_are_written_again(r, start_jobd):
    # Redis out of memory (noeviction) answers the outcome's MULTI/EXEC with
    # an error while the connection stays up: no reconnect will come, so
    # jobd must try again by itself once Redis takes writes.
    daemon = start_jobd()
    submit(r, {"id": "refused", "type": "sleep", "ms": 2000})    # still running when refused
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


class ExecReplyDropper(ForwardingProxy):
    """A TCP proxy in front of Redis that forwards everything, except once:
    the first connection to send bytes holding TRIGGER is closed instead of
    passing on its next reply (the transaction ran, and jobd never hears
    so), or, with drop="request", instead of passing those bytes on (it never
    ran, and jobd cannot tell either). ON_DROP, if given, runs just before
    the connection is closed: what others do to Redis meanwhile."""

    def __init__(self, redis_port, trigger=b"ZADD", drop="reply", on_drop=None):
        self.trigger = trigger
        self.drop = drop
        self.on_drop = on_drop
        self.dropped = 0
        self.armed = True
        super().__init__(redis_port)

    def new_state(self):
        return {"triggered": False}

    def _dropped(self):
        self.armed = False
        if self.on_drop:
            self.on_drop()
        self.dropped += 1
        return False

    def forward(self, data, src, dst, state, upstream):
        if upstream and self.armed and self.trigger in data:
            if self.drop == "request":
                return self._dropped()
            state["triggered"] = True
        if not upstream and state["triggered"]:
            return self._dropped()
        dst.sendall(data)
        return True

    def close(self):
        """Stop accepting only: the daemon behind it is stopped through it."""
        self.listener.close()


def test_a_schedule_resent_after_a_lost_reply_is_not_doubled(r, redis_server, start_jobd):
    proxy = ExecReplyDropper(redis_server.port)
    try:
        start_jobd(redis__port=proxy.port)
        submit(r, {"id": "once", "type": "sleep", "ms": 1, "delay_ms": 60000})
        wait_for(lambda: proxy.dropped == 1, what="the dropped reply")
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0,
                 what="the entry acknowledged after the resend")
        time.sleep(0.5)
        members = r.zrange(f"{NS}:scheduled", 0, -1)
        assert len(members) == 1, members     # not scheduled twice
    finally:
        proxy.close()


def send_by(path):
    """How a producer sends a job on PATH: XADD, or PUBLISH to a listener."""
    def send(r, job):
        if path == "stream":
            submit(r, job)
        else:
            assert publish(r, job) == 1
    return send


def lose_a_result(r, redis_server, start_jobd, path, job_id, drop):
    """A daemon behind an ExecReplyDropper set off by JOB_ID's result, that
    job sent on PATH and its drop seen; returns (proxy, ledger, daemon)."""
    proxy = ExecReplyDropper(redis_server.port, trigger=f":result:{job_id}".encode(), drop=drop)
    ledger = Ledger(r)
    daemon = start_jobd(redis__port=proxy.port, admin__listen=f"127.0.0.1:{free_port()}")
    send_by(path)(r, {"id": job_id, "type": "sleep", "ms": 1})
    wait_for(lambda: proxy.dropped == 1, what=f"the dropped {drop}")
    return proxy, ledger, daemon


def lost_replies(daemon):
    """(stored, not stored, still unsettled) from the daemon's /metrics."""
    samples = parse_metrics(get(f"http://{daemon.settings['admin']['listen']}/metrics")[1])
    return (samples['jobd_lost_replies_total{found="stored"}'],
            samples['jobd_lost_replies_total{found="not_stored"}'],
            samples["jobd_outcomes_unsettled"])


@pytest.mark.parametrize("path", ["stream", "pubsub"])
def test_an_outcome_whose_reply_was_lost_is_not_written_twice(r, redis_server, start_jobd, path):
    # The transaction holding the job's result ran, but the connection went
    # before its reply came. Written again blindly, the record would be
    # published twice and counted twice. jobd asks Redis after reconnecting:
    # a stream job's entry is no longer pending; a pub/sub job's transaction
    # set a marker key.
    send = send_by(path)
    proxy, ledger, daemon = lose_a_result(r, redis_server, start_jobd, path, f"lost-{path}",
                                          "reply")
    try:
        assert wait_result(r, f"lost-{path}")["status"] == "succeeded"
        send(r, {"id": "later", "type": "sleep", "ms": 1})
        wait_result(r, "later")
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="the XACKs")
        lost, duplicated = ledger.report([f"lost-{path}", "later"])
        assert not lost and not duplicated, (lost, duplicated)
        assert stats(r)["sleep.succeeded"] == 2
        # A spent marker is deleted by the next transaction: once the lost
        # one is settled, one more job leaves only its own marker, expiring.
        wait_for(lambda: "1 outcome(s) sent before the connection went were stored then"
                 in daemon.log_text(), what="the lost reply settled")
        send(r, {"id": "last", "type": "sleep", "ms": 1})
        wait_result(r, "last")
        markers = r.keys(f"{NS}:txn:*")
        assert len(markers) <= 1, markers
        assert all(0 < r.ttl(k) <= 86400 for k in markers)
        assert lost_replies(daemon) == (1, 0, 0)
    finally:
        ledger.running = False
        proxy.close()


@pytest.mark.parametrize("path", ["stream", "pubsub"])
def test_an_outcome_lost_before_it_reached_redis_is_written_again(r, redis_server, start_jobd,
                                                                   path):
    # The other way a reply goes missing: the transaction itself never
    # arrived. The check must say so, and the outcome be written, once.
    proxy, ledger, daemon = lose_a_result(r, redis_server, start_jobd, path, f"cut-{path}",
                                          "request")
    try:
        assert wait_result(r, f"cut-{path}")["status"] == "succeeded"
        lost, duplicated = ledger.report([f"cut-{path}"])
        assert not lost and not duplicated, (lost, duplicated)
        assert stats(r)["sleep.succeeded"] == 1
        assert "were not stored; writing them again" in daemon.log_text()
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="the XACK")
        assert lost_replies(daemon) == (0, 1, 0)
    finally:
        ledger.running = False
        proxy.close()


def test_a_requeue_whose_reply_was_lost_is_not_doubled(r, redis_server, start_jobd):
    # A drain puts a running job back on its stream; the transaction ran but
    # its reply was lost. Added again, the job would run twice.
    proxy = ExecReplyDropper(redis_server.port, trigger=b"$4\r\nback\r\n$8\r\nattempts")
    try:
        daemon = start_jobd(redis__port=proxy.port, shutdown__drain_ms=200)
        submit(r, {"id": "back", "type": "sleep", "ms": 60000})
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 1, what="the job taken")
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: proxy.dropped == 1, what="the dropped reply")
        assert daemon.proc.wait(20) == 0
    finally:
        proxy.close()
    # Count the copies still to run (pending or not yet delivered): were the
    # drain's CLIENT UNBLOCK to miss the read, that read could bring the
    # requeued entry back to be put back again, acknowledged, harmless.
    assert live_copies(r, "back") == 1


def test_a_refused_retry_in_a_transaction_whose_reply_was_lost_is_kept(r, redis_server,
                                                                       start_jobd):
    # The retry's ZADD into a NS:scheduled of another type failed as its
    # transaction ran, and the job's entry was acknowledged beside it; the
    # reply saying so was lost with the connection. The check found the
    # transaction's marker, judged it stored, and the job was gone: no
    # result, no entry, nothing in NS:scheduled. The check now asks the
    # key's type too, and the job is kept and written again until it can be.
    r.set(f"{NS}:scheduled", "not a sorted set")
    proxy = ExecReplyDropper(redis_server.port, trigger=b'"nonce"')
    try:
        daemon = start_jobd(redis__port=proxy.port)
        submit(r, {"id": "kept", "type": "sleep", "ms": 5000, "timeout_ms": 50,
                   "retry": {"attempts": 2, "delay_ms": 100, "jitter": False}})
        wait_for(lambda: proxy.dropped == 1, what="the dropped reply")
        wait_for(lambda: "1 outcome(s) sent before the connection went were stored then"
                 in daemon.log_text(), what="the check")
        assert r.xpending(f"{NS}:queue", "jobd")["pending"] == 0    # acknowledged
        time.sleep(1.5)     # written again at least once more, refused: still kept
        assert r.get(f"{NS}:result:kept") is None
        r.delete(f"{NS}:scheduled")
        rec = wait_result(r, "kept", timeout=15)
        assert (rec["status"], rec["attempts"]) == ("timed_out", 2), rec
        assert ("scheduling it (NS:scheduled) failed in a transaction whose reply was lost: "
                "jobd:scheduled is a key of another type" in daemon.log_text())
    finally:
        proxy.close()


def stream_id(text):
    ms, seq = text.split("-")
    return int(ms), int(seq)


def live_copies(r, job_id, stream=f"{NS}:queue"):
    """Entries of STREAM for JOB_ID (put back by jobd) that a daemon would still run."""
    group = next(g for g in r.xinfo_groups(stream) if g["name"] == "jobd")
    delivered = stream_id(group["last-delivered-id"])
    pending = {p["message_id"] for p in r.xpending_range(stream, "jobd", "-", "+", 1000)}
    return sum(1 for entry_id, fields in r.xrange(stream)
               if fields.get("id") == job_id
               and (entry_id in pending or stream_id(entry_id) > delivered))


def test_a_silent_redis_is_noticed_on_the_command_connection(r, start_jobd):
    # CLIENT PAUSE keeps the connections open and answers nothing. The
    # heartbeat keeps sending on the command connection every 3 s; that must
    # not keep extending the deadline of the command that went unanswered.
    daemon = start_jobd()
    submit(r, {"id": "before", "type": "sleep", "ms": 1})
    wait_result(r, "before")
    r.execute_command("CLIENT", "PAUSE", 16000, "ALL")
    wait_for(lambda: "redis command connection: command timed out" in daemon.log_text(),
             timeout=15, what="the command connection's timeout")
    time.sleep(1.5)     # the pause ends; everything comes back
    submit(r, {"id": "after", "type": "sleep", "ms": 1})
    assert wait_result(r, "after", timeout=15)["status"] == "succeeded"


def fake_server(on_accept):
    """A listening socket on a free loopback port whose thread hands every
    accepted connection to ON_ACCEPT until the socket is closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            on_accept(conn)
    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_server_that_closes_at_once_gets_backoff_not_a_storm(start_jobd):
    # Accepts and closes at once, as Redis does at maxclients: each of the
    # three connections must back off (100 ms doubling), not reconnect every
    # 50-100 ms because the TCP connect itself succeeded.
    accepted = []

    def close_at_once(conn):
        accepted.append(time.monotonic())
        conn.close()
    listener = fake_server(close_at_once)
    try:
        daemon = start_jobd(wait=False, redis__port=listener.getsockname()[1])
        time.sleep(4)
        assert daemon.proc.poll() is None
        # Backoff 100, 200, 400, 800, 1600 ms (jittered down to half): at
        # most about 8 connects a connection in 4 s; a storm makes 40 or more.
        assert len(accepted) <= 3 * 9, len(accepted)
    finally:
        listener.close()


def test_nothing_runs_in_db_0_when_select_is_refused(r, start_jobd):
    # redis.db beyond the server's "databases": SELECT fails. No module may
    # use the connection before SELECT answered, or it reads and writes db 0.
    submit(r, {"id": "db0", "type": "sleep", "ms": 1})
    daemon = start_jobd(wait=False, redis__db=20)
    wait_for(lambda: "DB index is out of range" in daemon.log_text(), what="the refused SELECT")
    time.sleep(1.5)
    assert daemon.proc.poll() is None
    assert r.get(f"{NS}:result:db0") is None
    assert r.xinfo_groups(f"{NS}:queue") == []
    assert not r.exists(daemon.worker_key())



def test_a_server_paused_at_start_is_waited_out(r, start_jobd):
    # The daemon connects while Redis answers nothing (CLIENT PAUSE): the
    # handshake's HELLO goes unanswered, and it must not wait for ever. (A
    # subscriber whose SUBSCRIBEs alone go unanswered: the test after it.)
    r.execute_command("CLIENT", "PAUSE", 12000, "ALL")
    daemon = start_jobd(wait=False)
    wait_for(lambda: "subscriber connection: command timed out" in daemon.log_text(),
             timeout=12, what="the handshake's deadline")
    assert "connection ready" not in daemon.log_text()
    time.sleep(1.5)     # the pause ends; the daemon comes up
    daemon.wait_ready(timeout=15)
    wait_for(lambda: publish(r, {"id": "after-pause", "type": "sleep", "ms": 1}) == 1,
             what="the subscriber back")
    assert wait_result(r, "after-pause")["status"] == "succeeded"


class SubscribeSwallower(ForwardingProxy):
    """A TCP proxy in front of Redis that forwards everything, except that
    the first connection to send a (P)SUBSCRIBE is from then on left open and
    unanswered: what it sends (its SUBSCRIBEs) never reaches Redis and is
    never confirmed. Later connections are forwarded whole. With TRIGGER
    b"UNSUBSCRIBE", it is the first connection to send a (P)UNSUBSCRIBE
    instead: subscribed as usual, it still hears its channels (Redis still
    delivers to it), but its UNSUBSCRIBEs are never confirmed. SWALLOWED_AT:
    when (time.monotonic()) that began."""

    def __init__(self, redis_port, trigger=b"SUBSCRIBE"):
        self.trigger = trigger
        self.lock = threading.Lock()
        self.swallowed = None       # the connection left hanging
        self.swallowed_at = None
        self.subscribers = 0        # connections that sent TRIGGER
        super().__init__(redis_port)

    def new_state(self):
        return {"stalled": False}

    def forward(self, data, src, dst, state, upstream):
        if upstream and self.trigger in data.upper() and not state["stalled"]:
            with self.lock:
                self.subscribers += 1
                if self.swallowed is None:
                    self.swallowed = src
                    self.swallowed_at = time.monotonic()
                    state["stalled"] = True
        if not (upstream and state["stalled"]):
            dst.sendall(data)
        return True     # stalled: what it sends is read and dropped, never answered


def test_a_subscriber_left_unconfirmed_is_replaced(r, redis_server, start_jobd):
    # The first subscriber connection gets no answer at all, ever, and stays
    # open: no command deadline covers SUBSCRIBE, and no reconnect would come
    # by itself. Only noticing the missing confirmations and making a new
    # connection brings the daemon up (its worker key is written once every
    # subscription is confirmed) and pub/sub jobs delivered.
    proxy = SubscribeSwallower(redis_server.port)
    try:
        daemon = start_jobd(wait=False, redis__port=proxy.port)
        wait_for(lambda: proxy.swallowed is not None, what="the first subscriber stalled")
        assert not r.exists(daemon.worker_key())
        daemon.wait_ready(timeout=30)
        assert proxy.subscribers >= 2
        # The new subscriber is the one Redis knows: a published job arrives.
        wait_for(lambda: publish(r, {"id": "resubscribed", "type": "sleep", "ms": 1}) == 1,
                 timeout=10, interval=0.2, what="a subscriber on the channel")
        assert wait_result(r, "resubscribed")["status"] == "succeeded"
        snapshot = json.loads(r.get(daemon.worker_key()))
        assert snapshot["redis_reconnects"] >= 1, snapshot
    finally:
        proxy.close()


def test_auth_with_username_then_a_wrong_password(r, redis_server, start_jobd):
    # The handshake: AUTH user password must be answered before any module
    # uses the connection; a refused AUTH leaves the daemon up, running
    # nothing, and retrying slowly.
    import redis as redis_py
    r.execute_command("ACL", "SETUSER", "worker", "on", ">s3cret", "~*", "&*", "+@all")
    r.execute_command("ACL", "SETUSER", "default", "off")
    authed = redis_py.Redis(port=redis_server.port, username="worker", password="s3cret",
                            decode_responses=True)
    daemon = start_jobd(wait=False, redis__username="worker", redis__password="s3cret")
    wait_for(lambda: authed.exists(daemon.worker_key()), what="the daemon logged in")
    authed.xadd(f"{NS}:queue", {"job": json.dumps({"id": "authed", "type": "sleep", "ms": 1})})
    wait_for(lambda: authed.get(f"{NS}:result:authed"), what="the job's result")
    daemon.stop()
    wrong = start_jobd(name="wrong", wait=False, redis__username="worker",
                       redis__password="nope")
    authed.xadd(f"{NS}:queue", {"job": json.dumps({"id": "refused", "type": "sleep", "ms": 1})})
    wait_for(lambda: "WRONGPASS" in wrong.log_text(), what="the refused AUTH")
    time.sleep(1)
    assert wrong.proc.poll() is None
    assert authed.get(f"{NS}:result:refused") is None
    # Slow retries after a refusal (2.5-5 s backoff), not a reconnect storm:
    # one refusal for each of the three connections so far.
    assert wrong.log_text().count("WRONGPASS") <= 3, wrong.log_text()


def test_auth_sends_the_username_and_every_connection_is_that_user(redis_server, start_jobd):
    # The default user has the same password as "worker" but may run no
    # command: a handshake that sent "AUTH s3cret" without the username would
    # log in as default and then be refused everything (NOPERM), so no job
    # would run. Only "AUTH worker s3cret" makes jobd work here. (This test's
    # redis-server is its own, stopped in teardown: the ACL changes end with it.)
    import redis as redis_py
    setup = redis_py.Redis(port=redis_server.port, decode_responses=True)
    setup.execute_command("ACL", "SETUSER", "worker", "on", ">s3cret", "~*", "&*", "+@all")
    setup.close()
    admin = redis_py.Redis(port=redis_server.port, username="worker", password="s3cret",
                           decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "default", "on", "resetpass", ">s3cret",
                          "resetkeys", "resetchannels", "-@all")
    admin.execute_command("ACL", "LOG", "RESET")
    # The harness's own clients (logged in as default before the change) go,
    # so that every other connection left is one of jobd's.
    admin.execute_command("CLIENT", "KILL", "USER", "default")
    own_id = admin.client_id()
    daemon = start_jobd(wait=False, redis__username="worker", redis__password="s3cret")
    wait_for(lambda: daemon.proc.poll() is None and admin.exists(daemon.worker_key()),
             timeout=15, what="the daemon logged in and ready")
    admin.xadd(f"{NS}:queue", {"job": json.dumps({"id": "acl", "type": "sleep", "ms": 1})})
    rec = json.loads(wait_for(lambda: admin.get(f"{NS}:result:acl"), what="the job's result"))
    assert rec["status"] == "succeeded", rec
    # The pub/sub path works too: the subscriber is logged in as worker.
    wait_for(lambda: admin.publish(f"{NS}:jobs", json.dumps(
        {"id": "acl-pub", "type": "sleep", "ms": 1})) == 1, what="the subscriber")
    assert json.loads(wait_for(lambda: admin.get(f"{NS}:result:acl-pub"),
                               what="the pub/sub job's result"))["status"] == "succeeded"
    # Every connection of jobd (command, subscriber, stream reader) is user
    # worker; none is default, and no login or command was refused.
    clients = [c for c in admin.client_list() if int(c["id"]) != own_id]
    assert len(clients) >= 3, clients
    assert {c["user"] for c in clients} == {"worker"}, clients
    assert any(int(c["sub"]) > 0 for c in clients), clients
    assert admin.execute_command("ACL", "LOG") == [], admin.execute_command("ACL", "LOG")


def test_a_lasting_eval_refusal_is_logged_once_and_due_jobs_move_once_allowed(r, start_jobd):
    # jobd's user may not run EVAL: the scheduler's move of due jobs (tried
    # every 100 ms) is refused each time. That is said once at error level,
    # not ten times a second; everything else works, and once EVAL is
    # allowed the delayed job is moved and runs.
    r.execute_command("ACL", "SETUSER", "worker", "on", ">s3cret", "~*", "&*", "+@all",
                      "-eval", "-evalsha")
    daemon = start_jobd(redis__username="worker", redis__password="s3cret")
    submit(r, {"id": "now", "type": "sleep", "ms": 1})
    assert wait_result(r, "now")["status"] == "succeeded"
    submit(r, {"id": "later", "type": "sleep", "ms": 1, "delay_ms": 100})
    wait_for(lambda: r.zcard(f"{NS}:scheduled") == 1, what="the delayed job parked")
    wait_for(lambda: daemon.log_text().count("moving due jobs") >= 10, what="refused moves")
    assert r.get(f"{NS}:result:later") is None
    log = daemon.log_text()
    assert log.count(" ERROR moving due jobs") == 1, log
    assert "NOPERM" in log
    r.execute_command("ACL", "SETUSER", "worker", "+eval", "+evalsha")
    assert wait_result(r, "later")["status"] == "succeeded"
    assert "moving due jobs from jobd:scheduled works again" in daemon.log_text()


def test_a_handshake_that_is_never_answered_times_out(start_jobd):
    # A server that accepts and then never answers AUTH: the login has the
    # command deadline too, so the connection is dropped and made again, and
    # nothing uses it meanwhile.
    conns = []
    listener = fake_server(conns.append)        # read nothing, answer nothing
    try:
        daemon = start_jobd(wait=False, redis__port=listener.getsockname()[1],
                            redis__password="pw")
        wait_for(lambda: len(conns) >= 3, what="the three connections")
        n = len(conns)
        wait_for(lambda: "command timed out" in daemon.log_text(), timeout=20,
                 what="the login's deadline")
        wait_for(lambda: len(conns) > n, timeout=15, what="a new connection")
        assert "connection ready" not in daemon.log_text()
        assert daemon.proc.poll() is None
    finally:
        listener.close()
        for c in conns:
            c.close()


ROLES = ("command", "subscriber", "stream")


def log_times(text, needle):
    """The timestamps (s) of the log lines of TEXT that contain NEEDLE."""
    from datetime import datetime
    return [datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
            for line in text.splitlines() if needle in line]


def test_backoff_starts_over_after_five_healthy_seconds(r, redis_server, start_jobd):
    # An outage long enough for five failed connects in a row grows each
    # connection's backoff to 2.5-5 s. Once the connections have been healthy
    # for more than 5 s that history is forgotten: the next outage is retried
    # after the first step (50-100 ms), not after the grown one.
    daemon = start_jobd()
    mark = len(daemon.log_text())
    redis_server.kill()
    failed = lambda role: daemon.log_text()[mark:].count(f"redis {role} connection: connect failed")
    wait_for(lambda: all(failed(role) >= 5 for role in ROLES), timeout=15,
             what="five failed connects of every connection")
    redis_server.start()
    ready = lambda role: f"redis {role} connection ready" in daemon.log_text()[mark:]
    wait_for(lambda: all(ready(role) for role in ROLES), timeout=15,
             what="every connection back after the long outage")
    submit(r, {"id": "between", "type": "sleep", "ms": 1})
    assert wait_result(r, "between", timeout=10)["status"] == "succeeded"
    time.sleep(6)       # healthy for longer than 5 s (checked every 250 ms)
    mark = len(daemon.log_text())
    redis_server.kill()
    # The first retry comes after the first backoff step: it fails (the
    # server is still down) within well under the grown 2.5 s. The daemon's
    # own log times below judge that; this only waits for the lines.
    wait_for(lambda: all(failed(role) >= 1 for role in ROLES), timeout=8,
             what="a first reconnect attempt of every connection")
    text = daemon.log_text()[mark:]
    for role in ROLES:
        lost = log_times(text, f"redis {role} connection lost")[0]
        retried = log_times(text, f"redis {role} connection: connect failed")[0]
        assert retried - lost < 1.0, (role, retried - lost)
    redis_server.start()
    wait_for(lambda: all(ready(role) for role in ROLES), timeout=10,
             what="every connection back after the second outage")
    submit(r, {"id": "after-second", "type": "sleep", "ms": 1})
    assert wait_result(r, "after-second", timeout=10)["status"] == "succeeded"


def draining_with_a_long_job(r, start_jobd, redis_port, long_ms, drain_ms, **settings):
    """A daemon on REDIS_PORT running a sleep job "long" of LONG_MS (on
    NS:queue), sent SIGTERM and draining (for up to DRAIN_MS). SETTINGS: more
    start_jobd() overrides."""
    daemon = start_jobd(redis__port=redis_port, shutdown__drain_ms=drain_ms, **settings)
    submit(r, {"id": "long", "type": "sleep", "ms": long_ms})
    wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="long to start")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: ": draining 1 job(s)" in daemon.log_text(), what="the drain")
    return daemon


def copies_of(r, job_id, stream=f"{NS}:queue"):
    """Entries of STREAM a daemon would still run whose envelope is JOB_ID's,
    parked (no "id" field: the envelope's) or put back (with one)."""
    group = next(g for g in r.xinfo_groups(stream) if g["name"] == "jobd")
    delivered = stream_id(group["last-delivered-id"])
    pending = {p["message_id"] for p in r.xpending_range(stream, "jobd", "-", "+", 1000)}
    return sum(1 for entry_id, fields in r.xrange(stream)
               if json.loads(fields["job"]).get("id") == job_id
               and (entry_id in pending or stream_id(entry_id) > delivered))


def test_a_pubsub_job_whose_parking_was_lost_still_runs(r, redis_server, start_jobd):
    # Full: a pub/sub job (its PUBLISH counted this daemon: taken) is parked
    # on the stream with an XADD that never reaches Redis. It used to be gone,
    # run nowhere; now the daemon holds it and runs it.
    proxy = ExecReplyDropper(redis_server.port, trigger=b"parked-job", drop="request")
    try:
        daemon = start_jobd(redis__port=proxy.port, limits__max_inflight=1)
        submit(r, {"id": "long", "type": "sleep", "ms": 1500})
        wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="long to start")
        assert publish(r, {"id": "parked-job", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: proxy.dropped == 1, what="the lost XADD")
        assert wait_result(r, "parked-job", timeout=15)["status"] == "succeeded"
        assert "parking a pub/sub job on the stream failed: connection lost; holding it here" \
            in daemon.log_text()
        assert copies_of(r, "parked-job") == 0
    finally:
        proxy.close()


def test_pubsub_jobs_taken_while_draining_survive_a_lost_command_connection(r, redis_server,
                                                                            start_jobd):
    # Draining: pub/sub jobs are parked on the stream. The first park's XADD
    # is lost with its connection, and the second job may come while that
    # connection is down. Both used to be lost ("pub/sub job lost during
    # shutdown"); now each ends with exactly one copy on the stream, and jobd
    # exits 0 once they are there.
    proxy = ExecReplyDropper(redis_server.port, trigger=b"first-park", drop="request")
    try:
        daemon = draining_with_a_long_job(r, start_jobd, proxy.port, long_ms=2000, drain_ms=4000)
        assert publish(r, {"id": "first-park", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: proxy.dropped == 1, interval=0.001, what="the lost XADD")
        assert publish(r, {"id": "second", "type": "sleep", "ms": 1}) == 1
        assert daemon.proc.wait(20) == 0
        assert "lost" not in daemon.log_text().replace("connection lost", "")
        assert wait_result(r, "long")["status"] == "succeeded"
        assert copies_of(r, "first-park") == 1
        assert copies_of(r, "second") == 1
    finally:
        proxy.close()


def start_refusing_xadd(r, start_jobd, **settings):
    """A daemon logged in as an ACL user with every right, running a 1.5 s
    job ("long"), whose XADD is then taken away. Returns the daemon and a
    function that gives XADD back. Redis checks the rights of a logged-in
    connection on each command, so either works at once."""
    acl = ["ACL", "SETUSER", "parker"]
    r.execute_command(*acl, "on", ">pw", "~*", "&*", "+@all")
    daemon = start_jobd(redis__username="parker", redis__password="pw", **settings)
    submit(r, {"id": "long", "type": "sleep", "ms": 1500})
    wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="long to start")
    r.execute_command(*acl, "-xadd")
    return daemon, lambda: r.execute_command(*acl, "+xadd")


def test_a_pubsub_job_whose_parking_redis_refused_still_runs(r, start_jobd):
    # Full: a pub/sub job is parked on the stream, and Redis answers the XADD
    # with an error (NOPERM: the user may not XADD) on a live connection.
    # Taken (its PUBLISH counted this daemon), it must not vanish: the daemon
    # holds it and runs it, once, without a copy left on the stream.
    daemon, allow = start_refusing_xadd(r, start_jobd, limits__max_inflight=1)
    ledger = Ledger(r)
    try:
        assert publish(r, {"id": "refused-park", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: "parking a pub/sub job on the stream failed: NOPERM" in daemon.log_text(),
                 what="the refused XADD")
        assert wait_result(r, "refused-park", timeout=15)["status"] == "succeeded"
        assert wait_result(r, "long")["status"] == "succeeded"
        assert "holding it here" in daemon.log_text()
        assert copies_of(r, "refused-park") == 0
        assert r.xlen(f"{NS}:queue") == 1          # "long" only: nothing was parked
        lost, duplicated = ledger.report(["long", "refused-park"])
        assert not lost and not duplicated, (lost, duplicated)
        assert stats(r)["sleep.succeeded"] == 2
    finally:
        ledger.running = False
        allow()


def test_a_pubsub_job_whose_parking_redis_refused_while_draining_goes_back(r, start_jobd):
    # Draining: the park of a pub/sub job is refused with an error reply. The
    # daemon holds the job; as every job held while draining, it goes back
    # on the stream (its requeue refused too, until XADD is allowed again),
    # exactly once, and jobd exits 0.
    daemon, allow = start_refusing_xadd(r, start_jobd, shutdown__drain_ms=20000)
    try:
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in daemon.log_text(), what="the drain")
        assert publish(r, {"id": "refused-drain", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: "parking a pub/sub job on the stream failed: NOPERM" in daemon.log_text(),
                 what="the refused XADD")
        wait_for(lambda: "will retry" in daemon.log_text(), what="the refused requeue")
        assert daemon.proc.poll() is None           # not gone without it
    finally:
        allow()
    assert daemon.proc.wait(20) == 0
    assert wait_result(r, "long")["status"] == "succeeded"
    assert r.get(f"{NS}:result:refused-drain") is None     # not run here: put back
    assert copies_of(r, "refused-drain") == 1
    assert "lost" not in daemon.log_text()


def tear_down(daemon, proxy, server):
    """Whatever a test left running: the daemon (killed), the proxy, Redis."""
    if daemon.proc and daemon.proc.poll() is None:
        daemon.kill9()
    if proxy:
        proxy.close()
    server.kill()


def test_a_lost_transaction_with_pubsub_outcomes_is_not_judged_by_its_stream_entry(tmp_path):
    # One transaction holds a stream job's outcome (A) and a pub/sub job's
    # (B), and never reaches Redis. Before jobd can ask, A's entry is acked
    # by someone else (another daemon that reclaimed it during a long
    # outage). Judged by A's entry ("not pending: it ran"), B's record was
    # never written. A transaction with any pub/sub outcome now sets a
    # marker of its own, and is judged by it.
    server = RedisServer(tmp_path, appendonly=True)
    r = server.client

    def ack_a():
        (entry_id, _), = r.xrange(f"{NS}:queue")
        r.xack(f"{NS}:queue", "jobd", entry_id)

    proxy = ExecReplyDropper(server.port, trigger=b":result:mixed-b", drop="request",
                             on_drop=ack_a)
    daemon = Jobd(tmp_path, proxy.port)
    try:
        daemon.start()
        submit(r, {"id": "mixed-a", "type": "sleep", "ms": 2000})
        assert publish(r, {"id": "mixed-b", "type": "sleep", "ms": 2000}) == 1
        wait_for(lambda: daemon.log_text().count("started (sleep)") == 2, what="both running")
        server.kill()               # both finish while Redis is away: one transaction later
        time.sleep(2.5)
        server.start()
        wait_for(lambda: proxy.dropped == 1, timeout=15, what="the lost transaction")
        assert wait_result(r, "mixed-b", timeout=15)["status"] == "succeeded"
        assert "2 outcome(s) sent before the connection went were not stored" \
            in daemon.log_text()
        assert daemon.stop() == 0
    finally:
        tear_down(daemon, proxy, server)


def slow_loading_redis(tmp_path):
    """A Redis with an AOF of 10,000 keys: restarted with --key-load-delay
    200 it answers LOADING for about 2 s."""
    server = RedisServer(tmp_path, appendonly=True)
    pad = server.client.pipeline(transaction=False)
    for i in range(10000):
        pad.set(f"pad:{i}", "x")
    pad.execute()
    return server


def test_a_lost_reply_checked_while_redis_loads_is_asked_again_not_written_twice(tmp_path):
    # The transaction ran, its reply was lost with a Redis restart, and the
    # restarted Redis is still loading its AOF when jobd asks whether it ran:
    # "LOADING" is not "no". Taken as "not stored", the outcome was written
    # twice (bench/soak counted one record twice). Now jobd asks again.
    server = slow_loading_redis(tmp_path)
    r = server.client

    def restart_loading_slowly():
        server.kill()
        server.start(extra=["--key-load-delay", "200"], wait=False)

    proxy = ExecReplyDropper(server.port, trigger=b":result:loading", drop="reply",
                             on_drop=restart_loading_slowly)
    daemon = Jobd(tmp_path, proxy.port)
    try:
        daemon.start()
        assert publish(r, {"id": "loading", "type": "sleep", "ms": 1}) == 1
        wait_for(lambda: proxy.dropped == 1, what="the lost reply")
        wait_for(lambda: "were stored then" in daemon.log_text(), timeout=30,
                 what="the lost reply settled")
        log = daemon.log_text()
        assert "LOADING" in log and "asking again" in log, log
        assert "writing them again" not in log, log
        assert wait_result(r, "loading")["status"] == "succeeded"
        assert stats(r)["sleep.succeeded"] == 1
        assert daemon.stop() == 0
    finally:
        tear_down(daemon, proxy, server)


def jobs_inflight(daemon):
    """jobd_jobs_inflight from the daemon's /metrics: jobs taken, outcome not yet stored."""
    samples = parse_metrics(get(f"http://{daemon.settings['admin']['listen']}/metrics")[1])
    return samples["jobd_jobs_inflight"]


class BusyScript:
    """Redis kept busy by a Lua script that never ends (EVAL from a client of
    its own, on a thread), so that every other command is answered
    "BUSY ..." until kill() sends SCRIPT KILL. The threshold after which
    Redis says BUSY instead of just not answering is set to 100 ms."""

    def __init__(self, port):
        self.port = port
        self.thread = None
        redis.Redis(port=port).config_set("busy-reply-threshold", 100)

    def start(self):
        """Start the script and return once Redis answers BUSY."""
        def run():
            try:
                redis.Redis(port=self.port).eval("while true do end", 0)
            except redis.exceptions.RedisError:
                pass            # "Script killed by user", or Redis killed
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        probe = redis.Redis(port=self.port)

        def busy():
            try:
                probe.exists("probe")
            except redis.exceptions.BusyLoadingError:
                return False    # LOADING, not this
            except redis.exceptions.ResponseError as e:
                return str(e).startswith("BUSY")
            return False
        wait_for(busy, what="Redis busy with the script")

    def kill(self):
        if not self.thread:
            return
        try:
            redis.Redis(port=self.port).script_kill()
        except redis.exceptions.RedisError:
            pass                # not running (any more)
        self.thread.join(10)
        self.thread = None


@pytest.mark.parametrize("path", ["stream", "pubsub"])
def test_a_lost_reply_checked_while_a_script_keeps_redis_busy_is_asked_again(
        r, redis_server, start_jobd, path):
    # The transaction ran and its reply was lost; when jobd asks whether it
    # ran (EXISTS on its marker), Redis is blocked by a long Lua script and
    # answers "BUSY": not "no". Taken as "not stored", the outcome would be
    # written twice (two records on NS:events, counted twice). jobd must ask
    # again until the script is killed, then find it stored.
    busy = BusyScript(redis_server.port)
    proxy = ExecReplyDropper(redis_server.port, trigger=f":result:busy-{path}".encode(),
                             drop="reply", on_drop=busy.start)
    ledger = Ledger(r)
    try:
        daemon = start_jobd(redis__port=proxy.port, admin__listen=f"127.0.0.1:{free_port()}")
        send_by(path)(r, {"id": f"busy-{path}", "type": "sleep", "ms": 1})
        wait_for(lambda: proxy.dropped == 1, what="the lost reply")
        wait_for(lambda: "checking 1 outcome(s) sent before the connection went: BUSY"
                 in daemon.log_text(), timeout=15, what="the check answered BUSY")
        busy.kill()
        wait_for(lambda: "1 outcome(s) sent before the connection went were"
                 in daemon.log_text(), timeout=15, what="the lost reply settled")
        # Nothing held any more: every write the daemon meant to make is made.
        wait_for(lambda: jobs_inflight(daemon) == 0, what="the job done with")
        assert wait_result(r, f"busy-{path}")["status"] == "succeeded"
        wait_for(lambda: r.xpending(f"{NS}:queue", "jobd")["pending"] == 0, what="the XACK")
        lost, duplicated = ledger.report([f"busy-{path}"])
        assert not lost and not duplicated, (lost, duplicated)
        assert stats(r)["sleep.succeeded"] == 1
        log = daemon.log_text()
        assert "; asking again in 1000 ms" in log, log
        assert "were stored then" in log and "writing them again" not in log, log
        assert lost_replies(daemon) == (1, 0, 0)
        assert daemon.stop() == 0
    finally:
        ledger.running = False
        busy.kill()
        proxy.close()


def test_an_outcome_lost_with_a_redis_that_restarted_empty_is_written(r, redis_server,
                                                                      start_jobd):
    # Redis restarts empty (no persistence) while a transaction of stream
    # outcomes is on the wire: it never ran. The group is made anew, empty
    # (another daemon, or jobd's own stream connection), so "the first entry
    # is not pending" was taken for "it ran" and the outcome dropped. Every
    # transaction now carries a marker and is judged by it.
    def restart_empty():
        redis_server.kill()
        redis_server.start()                # --appendonly no, --save "": empty
        r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)

    proxy = ExecReplyDropper(redis_server.port, trigger=b":result:gone", drop="request",
                             on_drop=restart_empty)
    try:
        daemon = start_jobd(redis__port=proxy.port)
        submit(r, {"id": "gone", "type": "sleep", "ms": 1})
        wait_for(lambda: proxy.dropped == 1, what="the dropped transaction")
        wait_for(lambda: "sent before the connection went" in daemon.log_text(), timeout=15,
                 what="the lost transaction checked")
        assert wait_result(r, "gone", timeout=10)["status"] == "succeeded"
        assert "were stored then" not in daemon.log_text()
    finally:
        proxy.close()


def test_a_stream_is_not_left_out_while_a_restarted_redis_loads(tmp_path):
    # XGROUP CREATE answered LOADING while the restarted Redis read its AOF,
    # and the stream was taken for one that cannot be read: left out of the
    # reads for the 5 s recheck, and said at error level (found by
    # bench/soak). Only an error about the key (WRONGTYPE, NOPERM) does that.
    # Since the stream connection reads NS:cancels before its XGROUP CREATEs,
    # it is that read that meets LOADING (asked again every second); either
    # way the stream must not be left out.
    server = slow_loading_redis(tmp_path)
    r = server.client
    daemon = Jobd(tmp_path, server.port)
    try:
        daemon.start()
        server.kill()
        server.start(extra=["--key-load-delay", "200"], wait=False)
        wait_for(lambda: any(("XGROUP CREATE" in line or "reading jobd:cancels" in line)
                             and "LOADING" in line for line in daemon.log_text().splitlines()),
                 timeout=20, what="the stream connection told LOADING")
        wait_for(lambda: loaded(r), timeout=20, what="Redis loaded")
        submit(r, {"id": "after", "type": "sleep", "ms": 1})
        assert wait_result(r, "after")["status"] == "succeeded"
        assert "cannot be read" not in daemon.log_text()
        assert daemon.stop() == 0
    finally:
        tear_down(daemon, None, server)


def loaded(r):
    try:
        return r.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
        return False


def replace_by_a_string(r, key):
    """KEY, a stream jobd reads, made a string under it: XADD answers WRONGTYPE."""
    r.delete(key)
    r.set(key, "not a stream")


def stream_job_ids(r, stream):
    """The envelope ids of every entry of STREAM, in order."""
    return [json.loads(fields["job"])["id"] for _, fields in r.xrange(stream)]


def admin_port(daemon):
    return int(daemon.settings["admin"]["listen"].rsplit(":", 1)[1])


def test_a_park_the_first_stream_refuses_while_draining_goes_to_the_next(r, redis_server,
                                                                        start_jobd):
    # Draining: a pub/sub job is parked on the first stream, which was
    # replaced by a key of another type while jobd ran and has not been read
    # since (the drain ended the blocked read). The park's XADD is refused
    # (WRONGTYPE): that marks the stream unreadable at once (said once at
    # error level, counted), and the job is parked on the next stream
    # instead; a later daemon runs it from there.
    first, queue = f"{NS}:first", f"{NS}:queue"
    streams = [first, queue]
    daemon = draining_with_a_long_job(r, start_jobd, redis_server.port, long_ms=2500,
                                      drain_ms=10000, intake__streams=streams,
                                      admin__listen=f"127.0.0.1:{free_port()}")
    # CLIENT UNBLOCK ended the read naming both streams: nothing but the park
    # can find the replaced key (a read's WRONGTYPE would mark it too).
    wait_for(lambda: not [c for c in r.client_list()
                          if c["cmd"] == "xreadgroup" and "b" in c["flags"]],
             what="the blocked read ended")
    replace_by_a_string(r, first)
    assert publish(r, {"id": "turned-away", "type": "sleep", "ms": 1}) == 1
    wait_for(lambda: f"stream {first} cannot be read: XADD: WRONGTYPE" in daemon.log_text(),
             what="the refused park marking the stream")
    assert unreadable_gauge(admin_port(daemon)) == 1
    assert daemon.proc.wait(20) == 0
    log = daemon.log_text()
    assert f"parking a pub/sub job on {first} failed: WRONGTYPE" in log, log
    assert log.count("cannot be read") == 1, log
    assert "holding it here" not in log, log
    assert "putting it back on a stream failed" not in log, log
    assert "lost" not in log, log
    assert wait_result(r, "long")["status"] == "succeeded"
    assert r.type(first) == "string"
    assert stream_job_ids(r, queue) == ["long", "turned-away"]
    assert copies_of(r, "turned-away") == 1
    # Not lost: the next daemon reads it from the second stream and runs it.
    start_jobd(name="next", intake__streams=streams)
    assert wait_result(r, "turned-away")["status"] == "succeeded"
    wait_for(lambda: r.xpending(queue, "jobd")["pending"] == 0, what="its entry acknowledged")
    assert stats(r)["sleep.succeeded"] == 2


def test_a_park_the_first_stream_refuses_while_full_goes_to_the_next_stream(r, start_jobd):
    # Full (limits.max_inflight 1, intake reading nothing): a pub/sub job is
    # parked on the first stream, replaced by a key of another type while
    # jobd ran. The XADD is refused (WRONGTYPE): the refusal marks the
    # stream unreadable (said once at error level, counted), and the job is
    # parked on the second stream, durable. It used to be held in memory
    # over the limit until a slot was free, and lost if the daemon died
    # meanwhile. The next job parked goes straight to the second stream.
    first, queue = f"{NS}:first", f"{NS}:queue"
    daemon = start_jobd(intake__streams=[first, queue], limits__max_inflight=1,
                        admin__listen=f"127.0.0.1:{free_port()}")
    submit(r, {"id": "long", "type": "sleep", "ms": 2000}, stream=queue)
    wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="long to start")
    replace_by_a_string(r, first)
    assert publish(r, {"id": "held", "type": "sleep", "ms": 1}) == 1
    wait_for(lambda: "held" in stream_job_ids(r, queue), what="held parked on the second stream")
    assert f"stream {first} cannot be read: XADD: WRONGTYPE" in daemon.log_text()
    assert unreadable_gauge(admin_port(daemon)) == 1
    assert publish(r, {"id": "parked", "type": "sleep", "ms": 1}) == 1
    wait_for(lambda: "parked" in stream_job_ids(r, queue), what="parked on the second stream")
    assert r.get(f"{NS}:result:long") is None       # still full: parked, not taken
    assert wait_result(r, "held")["status"] == "succeeded"
    assert wait_result(r, "parked")["status"] == "succeeded"
    log = daemon.log_text()
    assert log.count(f"parking a pub/sub job on {first} failed: WRONGTYPE") == 1, log
    assert "holding it here" not in log, log
    assert log.count("cannot be read") == 1, log
    assert stream_job_ids(r, queue) == ["long", "held", "parked"]
    assert r.type(first) == "string"
    wait_for(lambda: r.xpending(queue, "jobd")["pending"] == 0, what="the XACKs")
    assert stats(r)["sleep.succeeded"] == 3


def test_a_drain_whose_unsubscribe_is_never_confirmed_still_exits(r, redis_server, start_jobd):
    # At the drain's end jobd unsubscribes and reads up to Redis's
    # confirmation, so that a message already on its way is parked, not
    # lost. Here the subscriber's UNSUBSCRIBEs never reach Redis and its
    # connection stays open: no confirmation comes, and no reconnect either.
    # jobd waits for it 5 s (still reading: a job published meanwhile is
    # parked), says so, and exits 0.
    proxy = SubscribeSwallower(redis_server.port, trigger=b"UNSUBSCRIBE")
    try:
        daemon = draining_with_a_long_job(r, start_jobd, proxy.port, long_ms=300, drain_ms=5000)
        wait_for(lambda: proxy.swallowed is not None, what="the UNSUBSCRIBEs swallowed")
        assert publish(r, {"id": "meanwhile", "type": "sleep", "ms": 1}) == 1
        try:
            code = daemon.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError("jobd still waits for the UNSUBSCRIBE confirmation 10 s on")
        took = time.monotonic() - proxy.swallowed_at
        log = daemon.log_text()
        assert code == 0, log
        assert 4.5 < took < 8, f"exit {took:.2f} s after the UNSUBSCRIBEs"
        assert log.count("WARN shutdown: the subscriber connection did not confirm its "
                         "UNSUBSCRIBE in 5000 ms; a pub/sub job still on its way to it is lost") \
            == 1, log
        assert "ERROR" not in log, log
        # The wait ended with the drain's own work done, not given up.
        assert wait_result(r, "long")["status"] == "succeeded"
        assert copies_of(r, "meanwhile") == 1
        assert not r.exists(daemon.worker_key())
    finally:
        proxy.close()


def test_reply_to_still_gets_a_record_whose_exec_reply_was_lost(r, redis_server, start_jobd):
    # The record kept for reply_to is dropped when the EXEC reply is lost
    # (not held through an outage); once Redis says the transaction ran, the
    # record is written again and published, the same text as stored.
    proxy = ExecReplyDropper(redis_server.port, trigger=b":result:lost-reply")
    reply = r.pubsub()
    reply.subscribe("client:lost")
    wait_for(lambda: reply.get_message(timeout=0.2), what="the subscription")
    try:
        start_jobd(redis__port=proxy.port)
        submit(r, {"id": "lost-reply", "type": "sleep", "ms": 1, "reply_to": "client:lost"})
        wait_for(lambda: proxy.dropped == 1, what="the dropped reply")
        msg = wait_for(lambda: reply.get_message(timeout=0.2), what="the record on reply_to")
        assert msg["data"] == r.get(f"{NS}:result:lost-reply")
        assert json.loads(msg["data"])["status"] == "succeeded"
        time.sleep(0.5)
        assert reply.get_message(timeout=0.2) is None     # once
    finally:
        proxy.close()
