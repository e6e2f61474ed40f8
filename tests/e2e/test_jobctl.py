"""jobctl driven end to end against a live daemon."""
import hashlib
import json
import os
import subprocess
import time

from conftest import NS, REPO, submit, wait_for, wait_result, wait_results
from redis_proxy import ForwardingProxy

JOBCTL = os.path.join(os.path.dirname(os.environ.get("JOBD_BIN", REPO + "/src/jobd")), "jobctl")


def ctl(daemon, *args, stdin=None):
    return subprocess.run([JOBCTL, "-c", str(daemon.conf), *args], input=stdin,
                          capture_output=True, text=True, timeout=30)


def test_submit_wait_status_stats_workers(r, start_jobd):
    daemon = start_jobd()
    out = ctl(daemon, "submit", "--wait", '{"id":"a","type":"sleep","ms":1}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "succeeded"
    out = ctl(daemon, "submit", "--wait", '{"id":"b","type":"sleep","ms":"x"}')
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "rejected"
    assert ctl(daemon, "status", "a").returncode == 0
    assert ctl(daemon, "status", "b").returncode == 1
    assert ctl(daemon, "status", "nope").returncode == 1
    st = ctl(daemon, "--json", "stats")
    assert json.loads(st.stdout) == {"sleep.succeeded": 1, "sleep.rejected": 1}
    w = ctl(daemon, "--json", "workers")
    assert json.loads(w.stdout.splitlines()[0])["worker"].endswith(str(daemon.proc.pid))
    w = ctl(daemon, "workers")
    assert w.returncode == 0, w.stderr
    assert f":{daemon.proc.pid} inflight=0 queued=0 running=0 storing=0 group_children=0/0 " \
        "held_bytes=0 draining=no version=" in w.stdout, w.stdout
    # A worker key that is not jobd's snapshot (anyone may write one) prints, not crashes.
    r.set("jobd:worker:bogus", "not json", ex=10)
    w = ctl(daemon, "workers")
    assert w.returncode == 0 and "? inflight=0 queued=0" in w.stdout, (w.stdout, w.stderr)


def test_ndjson_publish_cancel_and_dead(r, start_jobd, tmp_path):
    daemon = start_jobd()
    lines = "\n".join(json.dumps({"id": f"n{i}", "type": "sleep", "ms": 1}) for i in range(20))
    out = ctl(daemon, "submit", "--wait", "-", stdin=lines + "\n")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 20
    assert ctl(daemon, "submit", "--publish", '{"id":"p","type":"sleep","ms":1}').returncode == 0
    assert wait_result(r, "p")["status"] == "succeeded"
    submit(r, {"id": "long", "type": "sleep", "ms": 10000})
    wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="start")
    assert "1 daemon" in ctl(daemon, "cancel", "long").stdout
    assert wait_result(r, "long")["status"] == "cancelled"
    submit(r, {"id": "bad", "type": "nope"})
    wait_result(r, "bad")
    dead = ctl(daemon, "--json", "dead", "list")
    entry = json.loads(dead.stdout.splitlines()[0])
    assert entry["id"] == "bad" and entry["error"]["code"] == "unknown_type"
    assert ctl(daemon, "dead", "retry", entry["entry"]).returncode == 0
    wait_for(lambda: r.xlen(f"{NS}:dead") == 1, what="the retried job to fail again")
    assert ctl(daemon, "dead", "purge").returncode == 0
    assert r.xlen(f"{NS}:dead") == 0


def test_progress_bar_on_a_terminal(r, start_jobd, tmp_path):
    daemon = start_jobd()
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_text("".join(json.dumps({"id": f"t{i}", "type": "sleep", "ms": 1}) + "\n"
                            for i in range(300)))
    # script(1) gives jobctl a pseudo-terminal: the bar is drawn there.
    out = subprocess.run(["script", "-qec", f"{JOBCTL} -c {daemon.conf} submit --wait @{jobs}",
                          "/dev/null"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
    assert "300/300" in out.stdout and "jobs/s" in out.stdout and "ETA" in out.stdout
    # Without a terminal: plain lines, one per job.
    plain = ctl(daemon, "submit", f"@{jobs}")
    assert "jobs/s" not in plain.stdout + plain.stderr
    assert len(plain.stdout.splitlines()) == 300


def test_usage_and_redis_errors(tmp_path):
    assert subprocess.run([JOBCTL], capture_output=True).returncode == 2
    out = subprocess.run([JOBCTL, "-p", "1", "stats"], capture_output=True, text=True)
    assert out.returncode == 3 and "cannot connect" in out.stderr
    # A usage error is one whether Redis answers or not (it used to be 3 here).
    for args in (["bogus"], ["status"], ["cancel", "a", "b"]):
        out = subprocess.run([JOBCTL, "-p", "1", *args], capture_output=True, text=True)
        assert out.returncode == 2 and "usage:" in out.stderr, (args, out)
    for port in ("abc", "0", "70000", "1x"):
        out = subprocess.run([JOBCTL, "-p", port, "stats"], capture_output=True, text=True)
        assert out.returncode == 2 and "a port is 1..65535" in out.stderr, (port, out)


def test_tail_follows_events(r, start_jobd):
    daemon = start_jobd()
    proc = subprocess.Popen([JOBCTL, "-c", str(daemon.conf), "tail"], stdout=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: r.pubsub_numsub(f"{NS}:events")[0][1] >= 1, what="tail to subscribe")
        submit(r, {"id": "tailed", "type": "sleep", "ms": 1})
        line = proc.stdout.readline()
        assert json.loads(line)["id"] == "tailed"
    finally:
        proc.kill()
        proc.wait()


def test_config_file_gives_db_and_channel(r, redis_server, start_jobd):
    # jobctl -c must reach the daemons where they are: redis.db, and the first
    # intake channel for --publish.
    import redis as redis_py
    db3 = redis_py.Redis(port=redis_server.port, db=3, decode_responses=True)
    daemon = start_jobd(wait=False, redis__db=3, intake__channels=["custom:in"])
    wait_for(lambda: db3.exists(daemon.worker_key()), what="the daemon in db 3")
    out = ctl(daemon, "submit", "--wait", '{"id":"in3","type":"sleep","ms":1}')
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "succeeded", out.stderr
    assert db3.exists(f"{NS}:result:in3") and not r.exists(f"{NS}:result:in3")
    out = ctl(daemon, "submit", "--publish", "--wait", '{"id":"pub3","type":"sleep","ms":1}')
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "succeeded", out.stderr


def test_ndjson_that_is_not_utf8_is_refused_whole(r, start_jobd, tmp_path):
    daemon = start_jobd()
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_bytes(b'{"id":"ok1","type":"sleep","ms":1}\n{"id":"caf\xe9","type":"sleep","ms":1}\n')
    out = ctl(daemon, "submit", f"@{jobs}")
    assert out.returncode == 2 and "line 2 is not UTF-8" in out.stderr, (out.returncode, out.stderr)
    assert r.xlen(f"{NS}:queue") == 0


def test_an_address_on_the_command_line_wins_over_the_config_files_socket(r, redis_server,
                                                                         start_jobd, tmp_path):
    # -c gives a socket path; -H/-p after it name a TCP address, which is
    # the one used (it was silently ignored for the path).
    daemon = start_jobd()
    conf = tmp_path / "socket.conf"
    conf.write_text(f'redis = {{ path = "{tmp_path}/no-such.sock"; }};\n')
    out = subprocess.run([JOBCTL, "-c", str(conf), "-H", "127.0.0.1", "-p", str(redis_server.port),
                          "submit", "--wait", '{"id":"tcp","type":"sleep","ms":1}'],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "succeeded"


def test_config_file_gives_a_unix_socket(r, redis_server, start_jobd, tmp_path):
    # redis.path wins over host/port for the daemon, so it must for jobctl -c
    # too: here host/port name another Redis (the fixture's, on TCP), which
    # jobctl would otherwise talk to and find no daemon there.
    import redis as redis_py
    sock = tmp_path / "sock" / "redis.sock"
    sock.parent.mkdir()
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock),
                               "--unixsocketperm", "700", "--dir", str(sock.parent),
                               "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        local = redis_py.Redis(unix_socket_path=str(sock), decode_responses=True)

        def up():
            try:
                return local.ping()
            except redis_py.exceptions.ConnectionError:
                return False
        wait_for(up, what="redis-server on its unix socket")
        daemon = start_jobd(wait=False, redis__path=str(sock))
        wait_for(lambda: local.exists(daemon.worker_key()), what="the daemon on the socket")
        w = ctl(daemon, "workers")
        assert w.returncode == 0 and f":{daemon.proc.pid} inflight=0" in w.stdout, \
            (w.stdout, w.stderr)
        out = ctl(daemon, "submit", "--wait", '{"id":"unix","type":"sleep","ms":1}')
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"] == "succeeded"
        assert local.exists(f"{NS}:result:unix") and not r.exists(f"{NS}:result:unix")
        st = ctl(daemon, "--json", "stats")
        assert st.returncode == 0 and json.loads(st.stdout) == {"sleep.succeeded": 1}, st
        assert ctl(daemon, "status", "unix").returncode == 0
        daemon.stop()
    finally:
        server.kill()
        server.wait()


def acl_user(r, redis_server, password):
    """Redis with the default user off and one ACL user, 'worker', that
    logs in with PASSWORD: a client authenticated as it."""
    import redis as redis_py
    r.execute_command("ACL", "SETUSER", "worker", "on", ">" + password, "~*", "&*", "+@all")
    r.execute_command("ACL", "SETUSER", "default", "off")
    return redis_py.Redis(port=redis_server.port, username="worker", password=password,
                          decode_responses=True)


def acl_daemon_and_jobctl(authed, start_jobd, password):
    daemon = start_jobd(wait=False, redis__username="worker", redis__password=password)
    wait_for(lambda: authed.exists(daemon.worker_key()), what="the daemon logged in")
    out = ctl(daemon, "submit", "--wait", '{"id":"acl","type":"sleep","ms":1}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "succeeded"
    w = ctl(daemon, "--json", "workers")
    assert w.returncode == 0, w.stderr
    assert json.loads(w.stdout.splitlines()[0])["worker"].endswith(f":{daemon.proc.pid}")
    st = ctl(daemon, "stats")
    assert st.returncode == 0 and "sleep.succeeded" in st.stdout, (st.stdout, st.stderr)
    assert ctl(daemon, "status", "acl").returncode == 0
    return daemon


def test_config_file_gives_an_acl_user(r, redis_server, start_jobd):
    # The default user is off: jobctl -c must log in as redis.username with
    # redis.password (AUTH user pass), or every command is refused.
    authed = acl_user(r, redis_server, "s3cret")
    daemon = acl_daemon_and_jobctl(authed, start_jobd, "s3cret")
    assert authed.get(f"{NS}:result:acl")
    # A wrong password in the file is a Redis error (exit 3), said as such.
    daemon.settings["redis"]["password"] = "nope"
    daemon.write_config()
    out = ctl(daemon, "stats")
    assert out.returncode == 3 and "WRONGPASS" in out.stderr, (out.returncode, out.stderr)


def test_config_file_gives_a_long_password(r, redis_server, start_jobd):
    # redis.password may be up to 4096 bytes (a generated token, say): the
    # daemon logs in with all of it, and so must jobctl -c (it kept 255).
    password = "k" * 4092 + "-end"
    authed = acl_user(r, redis_server, password)
    acl_daemon_and_jobctl(authed, start_jobd, password)


def test_config_file_gives_long_stream_and_channel_names(r, start_jobd):
    # Stream and channel names may be up to 512 bytes: jobctl -c must submit
    # to the daemon's stream and publish on its channel by their whole names.
    stream = "jobs:" + "s" * 400
    channel = "in:" + "c" * 400
    daemon = start_jobd(intake__streams=[stream], intake__channels=[channel])
    out = ctl(daemon, "submit", '{"id":"long-stream","type":"sleep","ms":1}')
    assert out.returncode == 0, out.stderr
    assert r.xlen(stream) == 1, r.keys("jobs:*")
    assert wait_result(r, "long-stream")["status"] == "succeeded"
    out = ctl(daemon, "submit", "--publish", '{"id":"long-channel","type":"sleep","ms":1}')
    assert out.returncode == 0, out.stderr
    assert wait_result(r, "long-channel")["status"] == "succeeded"


def test_a_cancel_sent_while_no_daemon_runs_reaches_the_waiting_job(r, start_jobd):
    daemon = start_jobd()
    assert daemon.stop() == 0
    submit(r, {"id": "queued", "type": "sleep", "ms": 1})
    out = ctl(daemon, "cancel", "queued")
    assert out.returncode == 0, out.stderr
    assert "sent to 0 daemon(s), and kept for 3600 s" in out.stdout
    daemon.start()
    rec = wait_result(r, "queued")
    assert rec["status"] == "cancelled" and "before it started" in rec["error"]["message"], rec


def test_a_cancel_kept_longer_is_not_shortened_by_jobctl(r, start_jobd):
    # Another daemon (or a jobctl with a longer jobs.cancel_ttl) kept this
    # cancel for a day: jobctl's hour must not cut it (ZADD GT); a cancel
    # kept shorter is lengthened to the hour.
    daemon = start_jobd()
    assert daemon.stop() == 0
    now_ms = int(time.time() * 1000)
    day, minute = now_ms + 86400 * 1000, now_ms + 60 * 1000
    r.zadd(f"{NS}:cancels", {"kept-a-day": day, "kept-a-minute": minute})
    for job_id in ("kept-a-day", "kept-a-minute"):
        out = ctl(daemon, "cancel", job_id)
        assert out.returncode == 0 and "kept for 3600 s" in out.stdout, (out.stdout, out.stderr)
    assert r.zscore(f"{NS}:cancels", "kept-a-day") == day
    assert abs(r.zscore(f"{NS}:cancels", "kept-a-minute") - (now_ms + 3600 * 1000)) < 60 * 1000


def test_cancel_with_an_id_that_is_not_utf8_or_needs_escaping(r, start_jobd):
    daemon = start_jobd()
    # Not UTF-8: jobctl refuses it (it used to crash on the JSON it could not build).
    out = subprocess.run([JOBCTL, "-c", str(daemon.conf), "cancel", b"\xff\xfe"],
                         capture_output=True, timeout=30)
    assert out.returncode == 2 and b"not UTF-8" in out.stderr, out
    # A quote in the id: --json prints valid JSON (it used to print it raw).
    out = ctl(daemon, "--json", "cancel", 'a"b')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"id": 'a"b', "daemons": 1}
    # No job can have that id: nothing is kept, and jobctl says so.
    assert "cannot name a job" in out.stderr
    assert not r.exists(f"{NS}:cancels")


def test_submit_wait_ends_for_envelopes_rejected_without_a_usable_id(r, start_jobd):
    # jobd stores no result under an id it cannot use; --wait used to wait
    # for one forever. jobctl now gives such an entry an id of its own.
    daemon = start_jobd()
    for envelope in ["not json", '{"type":"teleport"}', '{"type":"sleep","ms":1,"id":"a b"}']:
        out = ctl(daemon, "submit", "--wait", envelope)
        assert out.returncode == 1, (envelope, out.stdout, out.stderr)
        rec = json.loads(out.stdout)
        assert rec["status"] == "rejected" and rec["id"].startswith("jobctl-"), rec
    # Published without a usable id: nothing to wait for, said so at once.
    out = ctl(daemon, "submit", "--publish", "--wait", '{"type":"sleep","ms":1}')
    assert "cannot be waited for" in out.stderr, out.stderr


def test_bytes_that_are_not_utf8_show_as_replacement_characters_in_json(r, start_jobd):
    # --json printed null for a dead letter's id or error, or a record, that
    # was not UTF-8 (jansson refuses such a string whole).
    daemon = start_jobd()
    r.xadd(f"{NS}:dead", {"job": "{}", "id": b"bad\xff\xfeid", "error": b"oops \xc0\xaf\xed\xa0\x80"})
    r.set(f"{NS}:result:raw", b"\x1b not json \xff")
    (line,) = ctl(daemon, "--json", "dead", "list").stdout.splitlines()
    entry = json.loads(line)
    assert entry["id"] == "bad\ufffd\ufffdid"
    # An overlong "/" and a surrogate: one U+FFFD a byte, as jansson would refuse them.
    assert entry["error"] == "oops " + "\ufffd" * 5
    assert json.loads(ctl(daemon, "--json", "status", "raw").stdout) == "\x1b not json \ufffd"
    r.set(f"{NS}:result:plain", b"not json either \xff")
    assert json.loads(ctl(daemon, "--json", "status", "plain").stdout) == "not json either \ufffd"


def test_dead_retry_refuses_a_truncated_dead_letter(r, start_jobd):
    # An envelope over limits.max_job_bytes is dead-lettered cut to that
    # size; sent again it could only be rejected as broken JSON.
    daemon = start_jobd(limits__max_job_bytes=200)
    submit(r, {"id": "huge", "type": "sleep", "ms": 1, "pad": "x" * 500})
    wait_for(lambda: r.xlen(f"{NS}:dead") == 1, what="the dead letter")
    (entry_id, fields), = r.xrange(f"{NS}:dead")
    assert fields["truncated"] == "1"
    out = ctl(daemon, "dead", "retry", entry_id)
    assert out.returncode == 1 and "not retried" in out.stderr, out
    assert r.xlen(f"{NS}:dead") == 1 and r.xlen(f"{NS}:queue") == 1    # nothing sent


def test_text_from_redis_cannot_drive_the_terminal_or_break_json(r, start_jobd):
    # Worker keys and dead letters are anyone's who can write Redis (every
    # producer can): an escape sequence in them was printed raw to the
    # operator's terminal, and a quote in a dead letter's id broke
    # `--json dead list`.
    daemon = start_jobd()
    evil = "\x1b]0;owned\x07\x1b[2J\u009b31m"      # the last: CSI as a C1 control
    r.set(f"{NS}:worker:evil", json.dumps({"worker": "w" + evil, "version": evil}), ex=10)
    r.xadd(f"{NS}:dead", {"job": "{}", "id": 'q"' + evil, "error": "not json" + evil})
    r.set(f"{NS}:result:forged", json.dumps({"status": evil, "error": {"code": evil}}))
    submit(r, {"id": "xy", "type": "nope"})
    wait_result(r, "xy")
    r.set(f"{NS}:result:raw", b"\x1b]0;raw\x07 not json")
    r.hset(f"{NS}:stats", "sleep" + evil, 7)
    for args in (["workers"], ["dead", "list"], ["status", "forged"], ["stats"],
                 ["--json", "workers"], ["--json", "status", "forged"], ["--json", "status", "raw"],
                 ["--json", "stats"]):
        out = ctl(daemon, *args)
        assert not any(c in out.stdout for c in "\x1b\x07\u009b"), (args, out.stdout)
    assert "w?]0;owned??[2J??31m inflight=0" in ctl(daemon, "workers").stdout
    # --json: the same values, escaped, as JSON that still parses.
    snapshots = [json.loads(line) for line in ctl(daemon, "--json", "workers").stdout.splitlines()]
    assert "w" + evil in [s["worker"] for s in snapshots]
    assert json.loads(ctl(daemon, "--json", "status", "forged").stdout)["status"] == evil
    assert json.loads(ctl(daemon, "--json", "status", "raw").stdout) == "\x1b]0;raw\x07 not json"
    lines = [json.loads(line) for line in ctl(daemon, "--json", "dead", "list").stdout.splitlines()]
    assert [e["id"] for e in lines] == ["xy", 'q"' + evil], lines
    assert lines[0]["error"]["code"] == "unknown_type"
    assert lines[1]["error"] == "not json" + evil       # not JSON: given as a string
    assert "sleep?]0;owned??[2J??31m" in ctl(daemon, "stats").stdout
    assert json.loads(ctl(daemon, "--json", "stats").stdout)["sleep" + evil] == 7


def test_submit_wait_ignores_an_earlier_record_under_the_same_id(r, start_jobd):
    # --wait took the first record it found under NS:result:<id>: one left by
    # an earlier run of that id was printed at once as this run's outcome.
    daemon = start_jobd()
    out = ctl(daemon, "submit", "--wait", '{"id":"again","type":"sleep","ms":"x"}')
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "rejected", out
    for how in ([], ["--publish"]):
        out = ctl(daemon, "submit", *how, "--wait", '{"id":"again","type":"sleep","ms":800}')
        assert out.returncode == 0, (how, out.stdout, out.stderr)
        rec = json.loads(out.stdout)
        assert rec["status"] == "succeeded" and rec["result"] == {"slept_ms": 800}, (how, rec)
    # The succeeded record is the earlier one now: a rejection after it is seen.
    out = ctl(daemon, "submit", "--wait", '{"id":"again","type":"sleep","ms":-1}')
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "rejected", out


def test_workers_skips_a_worker_key_it_cannot_read(r, start_jobd):
    # A key under NS:worker: that is not a string (anyone may write one) made
    # GET fail with WRONGTYPE, and jobctl workers exited 3 listing nothing.
    daemon = start_jobd()
    r.hset(f"{NS}:worker:zz", "a", "b")
    for args in (["workers"], ["--json", "workers"]):
        out = ctl(daemon, *args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        assert str(daemon.proc.pid) in out.stdout, (args, out.stdout)
        assert f"skipped {NS}:worker:zz" in out.stderr and "WRONGTYPE" in out.stderr, out.stderr


def test_dead_retry_refuses_a_letter_without_a_job_and_keeps_its_id(r, start_jobd):
    # A dead letter without a job field (anyone may write the stream) was
    # retried as `job ""` and deleted: the job was lost, a rejection came back.
    daemon = start_jobd()
    for fields in ({"id": "nojob", "error": "x"}, {"job": "", "id": "empty"}):
        entry_id = r.xadd(f"{NS}:dead", fields)
        out = ctl(daemon, "dead", "retry", entry_id)
        assert out.returncode == 1 and "no job" in out.stderr, (fields, out.stdout, out.stderr)
        assert r.xrange(f"{NS}:dead", entry_id, entry_id), fields       # kept
    assert r.xlen(f"{NS}:queue") == 0
    r.delete(f"{NS}:dead")
    # An envelope without an id was dead-lettered with the entry's id field:
    # the retry carries it over, so its result comes under the same id.
    entry_id = r.xadd(f"{NS}:dead", {"job": '{"type":"sleep","ms":1}', "id": "carried"})
    out = ctl(daemon, "dead", "retry", entry_id)
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.strip()
    assert r.xrange(f"{NS}:queue", new_id, new_id)[0][1]["id"] == "carried"
    assert wait_result(r, "carried")["status"] == "succeeded"
    assert r.xlen(f"{NS}:dead") == 0


def test_dead_list_count_and_namespace_are_checked():
    # dead list N was read with atol(): "5x" listed 5, "0", "-1" and junk the
    # default 20, 99999999999999999999 LONG_MAX. -n NAMESPACE was cut at 79
    # bytes and took glob characters (the workers SCAN then matched other
    # namespaces' keys). Both are usage errors now, said before Redis is
    # asked anything (-p 1: nothing listens there).
    for n in ("0", "-1", "+5", " 5", "5x", "x", "", "1.5", "99999999999999999999"):
        out = subprocess.run([JOBCTL, "-p", "1", "dead", "list", n], capture_output=True, text=True)
        assert out.returncode == 2, (n, out.returncode, out.stderr)
        assert f'dead list: N is a whole number from 1, got "{n}"' in out.stderr, (n, out.stderr)
    for args in (["list", "5", "6"], ["purge", "x"], ["retry"], []):
        out = subprocess.run([JOBCTL, "-p", "1", "dead", *args], capture_output=True, text=True)
        assert out.returncode == 2 and "usage:" in out.stderr, (args, out)
    for ns, says in (("", "a namespace is 1..64 bytes, got 0"),
                     ("n" * 65, "a namespace is 1..64 bytes, got 65"),
                     ("*", "got '*' at position 1"), ("a b", "got byte 0x20 at position 2")):
        out = subprocess.run([JOBCTL, "-p", "1", "-n", ns, "stats"], capture_output=True, text=True)
        assert out.returncode == 2 and "jobctl: -n: " in out.stderr and says in out.stderr, \
            (ns, out.returncode, out.stderr)
    # Good ones go on to Redis (and find nothing listening: 3).
    for args in (["dead", "list", "1"], ["dead", "list", "9223372036854775807"],
                 ["-n", "n" * 64, "stats"], ["-n", "5x", "stats"]):
        out = subprocess.run([JOBCTL, "-p", "1", *args], capture_output=True, text=True)
        assert out.returncode == 3 and "cannot connect" in out.stderr, (args, out)


def test_dead_list_shows_a_dead_letter_past_a_nul_byte(r, start_jobd):
    # An id or error with a NUL byte was printed up to it, as a C string.
    daemon = start_jobd()
    r.xadd(f"{NS}:dead", {"job": "{}", "id": "before\x00after", "error": "oops\x00hidden"})
    out = ctl(daemon, "dead", "list", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(" before?after oops?hidden\n"), out.stdout
    entry = json.loads(ctl(daemon, "--json", "dead", "list", "1").stdout)
    assert entry["id"] == "before\x00after" and entry["error"] == "oops\x00hidden", entry


def test_dead_retry_sends_the_whole_job_named_job(r, start_jobd):
    # A field named "job\0x" (anyone may write the stream) was taken for
    # "job" by strcmp(), and its value queued instead of the job.
    daemon = start_jobd()
    job = '{"id":"nul-retry","type":"sleep","ms":1}\x00 and after it'
    entry_id = r.xadd(f"{NS}:dead", {"job\x00x": "a decoy", "job": job, "id": "nul-retry"})
    out = ctl(daemon, "dead", "retry", entry_id)
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.strip()
    assert r.xrange(f"{NS}:queue", new_id, new_id)[0][1]["job"] == job


def test_submit_from_a_file_sends_a_line_past_a_nul_byte(r, start_jobd, tmp_path):
    # The line was sent with "%s": cut at the NUL, and what came before it
    # ran as the whole job. All of it goes now; jobd rejects it (not JSON)
    # with a dead letter that holds all of it.
    daemon = start_jobd()
    line = b'{"id":"nul-sub","type":"sleep","ms":1}\x00{"more":1}'
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_bytes(line + b"\n")
    out = ctl(daemon, "submit", f"@{jobs}")
    assert out.returncode == 0, out.stderr
    entry_id = out.stdout.strip()
    assert r.xrange(f"{NS}:queue", entry_id, entry_id)[0][1]["job"] == line.decode()
    wait_for(lambda: r.xlen(f"{NS}:dead") == 1, what="the dead letter")
    (_, fields), = r.xrange(f"{NS}:dead")
    assert fields["job"] == line.decode(), fields
    assert r.get(f"{NS}:result:nul-sub") is None        # it never ran


def test_workers_names_a_key_with_a_nul_byte_it_skips(r, start_jobd):
    # GET "%s" of a key with a NUL byte read another key (nil), and the
    # key was skipped without a word.
    daemon = start_jobd()
    r.hset(f"{NS}:worker:a\x00b", "a", "b")
    out = ctl(daemon, "workers")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert f"skipped {NS}:worker:a?b: WRONGTYPE" in out.stderr, out.stderr


def test_stats_keeps_counter_names_apart_past_a_nul_byte(r, start_jobd):
    # Names were object keys as C strings: "a\0x" and "a\0y" became one
    # counter "a", and one of the two values was lost.
    daemon = start_jobd()
    r.hset(f"{NS}:stats", mapping={"a\x00x": 1, "a\x00y": 2})
    assert json.loads(ctl(daemon, "--json", "stats").stdout) == {"a\x00x": 1, "a\x00y": 2}
    text = ctl(daemon, "stats").stdout.splitlines()
    assert sorted(line.split() for line in text) == [["a?x", "1"], ["a?y", "2"]], text


class SentChunks(ForwardingProxy):
    """Keeps what the client sends, chunk by chunk: a client that waits for
    each answer before its next command sends a chunk a command."""

    def __init__(self, redis_port):
        super().__init__(redis_port)
        self.chunks = []

    def forward(self, data, src, dst, state, upstream):
        if upstream:
            self.chunks.append(data)
        dst.sendall(data)
        return True


def submit_wait_through_proxy(redis_server, daemon, tmp_path, ids, ms):
    """jobctl submit --wait of sleep jobs IDS from a file, sent through a
    SentChunks proxy; returns (the records printed, the chunks sent)."""
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_text("".join(json.dumps({"id": i, "type": "sleep", "ms": ms}) + "\n"
                            for i in ids))
    proxy = SentChunks(redis_server.port)
    try:
        out = subprocess.run([JOBCTL, "-c", str(daemon.conf), "-p", str(proxy.port), "submit",
                              "--wait", f"@{jobs}"], capture_output=True, text=True, timeout=30)
    finally:
        proxy.close()
    assert out.returncode == 0, (out.stdout, out.stderr)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(rec["id"] for rec in records) == sorted(ids)
    assert all(rec["status"] == "succeeded" for rec in records), records
    return records, proxy.chunks


def test_submit_wait_sends_a_file_of_envelopes_in_one_round_trip(r, redis_server, start_jobd,
                                                                  tmp_path):
    # --wait read each id's record (GET) and then sent its envelope (XADD),
    # each waiting for its answer: two round trips an envelope, one after
    # another. Now a batch of them goes at once, each GET still right before
    # its XADD; a record an earlier run left is still not taken for this one's.
    daemon = start_jobd()
    r.set(f"{NS}:result:f3", json.dumps({"id": "f3", "status": "failed", "queued_at": 1}))
    _, chunks = submit_wait_through_proxy(redis_server, daemon, tmp_path,
                                          [f"f{i}" for i in range(40)], 1)
    sends = [c for c in chunks if b"XADD" in c]
    assert sum(c.count(b"\r\nXADD\r\n") for c in sends) == 40
    assert len(sends) <= 2, f"{len(sends)} round trips to send 40 envelopes"


def test_submit_wait_asks_for_the_records_it_waits_for_in_one_round_trip(r, redis_server,
                                                                         start_jobd, tmp_path):
    # Each pass of --wait's poll (every 20 ms) read every record still awaited
    # with a GET of its own: N round trips a pass. Now one for all of them.
    daemon = start_jobd()
    _, chunks = submit_wait_through_proxy(redis_server, daemon, tmp_path,
                                          [f"s{i}" for i in range(40)], 400)
    polls = [c for c in chunks if b"XADD" not in c and b"\r\nGET\r\n" in c]
    gets = sum(c.count(b"\r\nGET\r\n") for c in polls)
    assert gets >= 40 and len(polls) <= gets / 10, f"{gets} GETs in {len(polls)} round trips"


def test_submit_wait_says_each_failure_of_a_batch_and_what_went_in(r, start_jobd):
    # A file goes in pipelined batches, so the commands after a failed one
    # are sent too. Only the first error was said; an envelope whose record
    # GET failed was submitted anyway, and with --wait the ids that went in
    # were never printed: a rerun of the file submitted them twice.
    daemon = start_jobd()
    r.hset(f"{NS}:result:b", "x", "1")       # its GET before the envelope: WRONGTYPE
    lines = "\n".join(json.dumps({"id": i, "type": "sleep", "ms": 1}) for i in "abc") + "\n"
    out = ctl(daemon, "submit", "--wait", "-", stdin=lines)
    assert out.returncode == 3, out
    assert "envelope 2 submitted, not waited for: redis: WRONGTYPE" in out.stderr, out.stderr
    assert sorted(out.stdout.split()) == ["a", "b", "c"], out.stdout
    for i in "ac":
        assert wait_result(r, i)["status"] == "succeeded"

    # Every envelope refused is said, by its number, and none is printed.
    r.delete(f"{NS}:queue")
    r.set(f"{NS}:queue", "not a stream")
    lines = "\n".join(json.dumps({"id": f"n{i}", "type": "sleep", "ms": 1}) for i in range(3))
    out = ctl(daemon, "submit", "--wait", "-", stdin=lines + "\n")
    assert out.returncode == 3 and out.stdout == "", out
    for n in (1, 2, 3):
        assert f"envelope {n} not submitted: redis: WRONGTYPE" in out.stderr, out.stderr


def test_submit_publish_sends_every_line_of_a_file_whole(r, start_jobd, tmp_path):
    # --publish from a file goes in pipelined batches of PUBLISHes sent by
    # length. Among 300 envelopes (two batches, and a third begun by the
    # long lines' bytes): one with a NUL byte and a job after it, lines of
    # 1.5 MB (runs: its digest is of all of it) and of 5 MB (over
    # limits.max_job_bytes), blank and CRLF-ended lines. Each is published
    # whole: it runs, or jobd rejects it with a record; nothing is cut.

    daemon = start_jobd(limits__max_job_bytes=4 << 20)
    ids = [f"e{i}" for i in range(300)]
    lines = [json.dumps({"id": i, "type": "sleep", "ms": 1}).encode() for i in ids]
    nul = b'{"id":"nul-pub","type":"sleep","ms":1}\x00{"id":"after-nul","type":"sleep","ms":1}'
    data = "d" * (3 << 19)
    lines[100] = nul
    lines[150] = json.dumps({"id": "long-ok", "type": "hash", "data": data}).encode()
    lines[200] = json.dumps({"id": "too-long", "type": "hash", "data": "x" * (5 << 20)}).encode()
    lines[250] += b"\r"
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_bytes(b"\n".join(lines[:50]) + b"\n\n\n" + b"\n".join(lines[50:]) + b"\n")
    out = ctl(daemon, "submit", "--publish", f"@{jobs}")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert len(out.stdout.splitlines()) == 300, out.stdout[:500]
    ran = [i for k, i in enumerate(ids) if k not in (100, 150, 200)]
    recs = wait_results(r, ran + ["long-ok"], timeout=60)
    assert all(recs[i]["status"] == "succeeded" for i in ran)
    assert recs["long-ok"]["result"]["digest"] == hashlib.sha256(data.encode()).hexdigest()
    # The NUL line is not JSON and the 5 MB one too large: each rejected with
    # a dead letter (no id read from either, so no result record); the job
    # before the NUL did not run as if it were the whole line.
    wait_for(lambda: r.xlen(f"{NS}:dead") == 2, what="two dead letters")
    (_, first), (_, second) = r.xrange(f"{NS}:dead")
    assert first["job"] == nul.decode(), first
    assert json.loads(first["error"])["code"] == "invalid_job", first
    assert json.loads(second["error"])["code"] == "too_large", second["error"]
    assert second["truncated"] == "1" and second["job"] == lines[200][:4 << 20].decode()
    for i in ("nul-pub", "after-nul", "too-long"):
        assert r.get(f"{NS}:result:{i}") is None, i
    assert daemon.proc.poll() is None


def test_submit_names_the_line_of_a_refused_envelope_past_blank_lines(r, start_jobd, tmp_path):
    # Blank lines are skipped, and the line named was the envelope's count.
    daemon = start_jobd()
    jobs = tmp_path / "jobs.ndjson"
    jobs.write_bytes(b'{"id":"ok1","type":"sleep","ms":1}\n\n\r\n'
                     b'{"id":"caf\xe9","type":"sleep","ms":1}\n')
    for args in (["submit", f"@{jobs}"], ["submit", "--publish", f"@{jobs}"]):
        out = ctl(daemon, *args)
        assert out.returncode == 2 and "line 4 is not UTF-8" in out.stderr, out.stderr
    assert r.xlen(f"{NS}:queue") == 0 and r.get(f"{NS}:result:ok1") is None
    # Refused by Redis: the envelope's number, and its line when they differ.
    r.delete(f"{NS}:queue")
    r.set(f"{NS}:queue", "not a stream")
    jobs.write_text('{"id":"a","type":"sleep","ms":1}\n\n{"id":"b","type":"sleep","ms":1}\n')
    out = ctl(daemon, "submit", f"@{jobs}")
    assert out.returncode == 3 and out.stdout == "", out
    assert "envelope 1 not submitted: redis: WRONGTYPE" in out.stderr, out.stderr
    assert "envelope 2 (line 3) not submitted: redis: WRONGTYPE" in out.stderr, out.stderr


def test_text_mode_shows_values_past_an_escaped_nul(r, start_jobd):
    # JSON from Redis may hold "\u0000" (a body an http job read, a key
    # anyone wrote). Text mode read it without JSON_ALLOW_NUL: the whole
    # document was refused, a succeeded job's status showed "?" and exited
    # 1, submit --wait said it failed, a worker's line lost every field.
    from http_server import HttpServer
    web = HttpServer()
    try:
        daemon = start_jobd(http__allow_private=True)
        job = json.dumps({"id": "nul-body", "type": "http", "url": web.url("/json-nul"),
                          "response": "json"})
        out = ctl(daemon, "submit", "--wait", job)
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert json.loads(out.stdout)["result"]["json"] == {"x": "\u0000"}
    finally:
        web.stop()
    out = ctl(daemon, "status", "nul-body")
    assert out.returncode == 0 and out.stdout == "nul-body succeeded attempts=1\n", out
    # A string value with a NUL shows whole, the NUL as '?' like any other
    # control character.
    r.set(f"{NS}:result:nul-err", json.dumps({"id": "nul-err", "status": "failed", "attempts": 2,
                                              "error": {"code": "odd\u0000code", "message": ""}}))
    out = ctl(daemon, "status", "nul-err")
    assert out.returncode == 1 and out.stdout == "nul-err failed attempts=2 error=odd?code\n", out
    r.set(f"{NS}:worker:nul", json.dumps({"worker": "host\u0000name", "version": "1\u00002",
                                          "jobs": {"inflight": 3}}), ex=10)
    out = ctl(daemon, "workers")
    assert out.returncode == 0, out.stderr
    assert "host?name inflight=3 queued=0" in out.stdout and "version=1?2" in out.stdout, out
    # A dead letter's error with one stays the object it is in --json (it
    # was given as a string of its text).
    error = {"code": "invalid_job", "message": "field a\u0000b"}
    r.xadd(f"{NS}:dead", {"job": "{}", "id": "d", "error": json.dumps(error)})
    out = ctl(daemon, "--json", "dead", "list")
    assert json.loads(out.stdout.splitlines()[0])["error"] == error, out
    # --json keeps it escaped.
    snapshots = [json.loads(line) for line in ctl(daemon, "--json", "workers").stdout.splitlines()]
    assert {"worker": "host\u0000name", "version": "1\u00002", "jobs": {"inflight": 3}} \
        in snapshots, snapshots
