"""No leaks and no memory errors: a run that handles every kind of job and
exits cleanly, under valgrind memcheck."""
import contextlib
import json
import shutil
import signal
import subprocess
import time

import pytest
import redis

from conftest import JOBD_BIN, NS, SANITIZERS, Jobd, publish, submit, wait_for, wait_results
from http_server import HttpServer
from pg_server import PgServer
from test_redis_outage import ExecReplyDropper


pytestmark = [
    pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed"),
    pytest.mark.skipif(SANITIZERS, reason="an ASan build cannot run under valgrind (both take "
                       "over malloc); the sanitizer run checks for leaks and memory errors itself"),
]


@contextlib.contextmanager
def under_memcheck(daemon, tmp_path):
    """DAEMON (a Jobd, configured, not started) running under valgrind
    memcheck; the body must end it with exit status 0, and the report must
    then show no error and no definite or indirect leak."""
    vg_log = tmp_path / "valgrind.log"
    logf = open(daemon.log, "ab")
    daemon.proc = subprocess.Popen(
        ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
         "--error-exitcode=99", f"--log-file={vg_log}", JOBD_BIN, "-c", str(daemon.conf)],
        stdout=logf, stderr=logf)
    try:
        daemon.wait_ready(timeout=60)
        yield vg_log
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    assert daemon.proc.returncode == 0, vg_log.read_text()[-3000:]
    report = vg_log.read_text()
    assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]
    assert "definitely lost: 0 bytes" in report or "All heap blocks were freed" in report


def test_memcheck_clean_run(tmp_path, redis_server, r):
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    daemon = Jobd(tmp_path, redis_server.port, files__root=str(root))
    with under_memcheck(daemon, tmp_path):
        ids = []
        jobs = [{"type": "sleep", "ms": 5}, {"type": "hash", "data": "x", "iterations": 100},
                {"type": "file", "path": "a.txt"}, {"type": "file", "path": "../x"},
                {"type": "sleep", "ms": "bad"}, {"type": "sleep", "ms": 2000, "timeout_ms": 50},
                {"type": "group", "jobs": [{"type": "sleep", "ms": 1}, {"type": "hash", "data": "y"}]},
                {"type": "sleep", "ms": 1, "delay_ms": 100}]
        for n, job in enumerate(jobs):
            ids.append(f"v{n}")
            submit(r, dict(job, id=f"v{n}"))
        publish(r, {"id": "vp", "type": "sleep", "ms": 1})
        ids.append("vp")
        wait_results(r, ids, timeout=60)
        submit(r, {"id": "left", "type": "sleep", "ms": 60000})
        wait_for(lambda: "job left: attempt 1" in daemon.log_text(), timeout=20, what="start")
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.send_signal(signal.SIGTERM)     # cut the drain: requeue path too
        daemon.proc.wait(60)


def test_memcheck_http_sql_and_outages(tmp_path, redis_server, r):
    # libcurl and libpq paths, and the failure paths around them: retries,
    # timeouts, cancels, a reload, PostgreSQL and Redis restarted under the
    # daemon, an outcome whose EXEC reply is lost, and a drain that stops an
    # http transfer and a query in flight.
    web = HttpServer()
    pg = PgServer(tmp_path)
    proxy = ExecReplyDropper(redis_server.port, trigger=b":result:vlost")
    try:
        daemon = Jobd(tmp_path, proxy.port, http__allow_private=True,
                      postgres__conninfo=pg.conninfo(), postgres__min_size=1,
                      postgres__max_size=2, postgres__pipeline=4,
                      postgres__queries={"echo": "SELECT $1::text AS v", "fail": "SELECT 1/0",
                                         "sleep": "SELECT pg_sleep($1::float8) AS slept"})
        with under_memcheck(daemon, tmp_path):
            jobs = {
                "vok": {"type": "http", "url": web.url("/json")},
                "vretry": {"type": "http", "url": web.url("/flaky/v"),
                           "retry": {"attempts": 3, "delay_ms": 10}},
                "vtimeout": {"type": "http", "url": web.url("/delay/3000"), "timeout_ms": 300},
                "vcancel": {"type": "http", "url": web.url("/delay/5000")},
                # The parsed URL kept for libcurl: masked in a copy, freed
                # when a later field of the job is refused.
                "vpass": {"type": "http", "url": web.url("/redirect/1").replace("://", "://u:pw@"),
                          "follow_redirects": True},
                "vinvalid": {"type": "http", "requests": [{"url": web.url("/json")},
                                                          {"url": web.url("/json"),
                                                           "method": "BREW"}]},
                "vsql": {"type": "sql", "query": "echo", "params": ["x"]},
                "vsqlfail": {"type": "sql", "query": "fail"},
                "vsqlcancel": {"type": "sql", "query": "sleep", "params": [5]},
                "vlost": {"type": "sleep", "ms": 1},
            }
            for job_id, job in jobs.items():
                submit(r, dict(job, id=job_id))
            wait_for(lambda: "job vsqlcancel: attempt 1" in daemon.log_text()
                     and "job vcancel: attempt 1" in daemon.log_text(), timeout=30,
                     what="the jobs to cancel running")
            for job_id in ("vcancel", "vsqlcancel"):
                r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": job_id}))
            recs = wait_results(r, list(jobs), timeout=60)
            for job_id in ("vok", "vretry", "vsql", "vlost", "vpass"):
                assert recs[job_id]["status"] == "succeeded", recs[job_id]
            assert recs["vretry"]["attempts"] == 2
            assert recs["vtimeout"]["status"] == "timed_out", recs["vtimeout"]
            assert recs["vsqlfail"]["status"] == "failed", recs["vsqlfail"]
            assert recs["vinvalid"]["error"]["code"] == "invalid_job", recs["vinvalid"]
            assert recs["vcancel"]["status"] == "cancelled", recs["vcancel"]
            assert recs["vsqlcancel"]["status"] == "cancelled", recs["vsqlcancel"]
            assert proxy.dropped == 1

            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload" in daemon.log_text(), timeout=30, what="the reload")
            pg.stop("immediate")
            pg.start()
            redis_server.restart()
            # The pool may still be backing off from the restart: retried.
            after = {"vpg": {"type": "sql", "query": "echo", "params": ["y"],
                             "retry": {"attempts": 10, "delay_ms": 500}},
                     "vweb": {"type": "http", "url": web.url("/status/200")}}
            for job_id, job in after.items():
                wait_for(lambda: submit_when_up(r, dict(job, id=job_id)), timeout=30,
                         what="Redis back")
            recs = wait_results(r, list(after), timeout=60)
            assert all(rec["status"] == "succeeded" for rec in recs.values()), recs

            submit(r, {"id": "vdrain-http", "type": "http", "url": web.url("/delay/5000")})
            submit(r, {"id": "vdrain-sql", "type": "sql", "query": "sleep", "params": [5]})
            wait_for(lambda: "job vdrain-sql: attempt 1" in daemon.log_text()
                     and "job vdrain-http: attempt 1" in daemon.log_text(), timeout=30,
                     what="the drained jobs running")
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(60)
    finally:
        proxy.close()
        pg.remove()
        web.stop()


def submit_when_up(r, job):
    try:
        submit(r, job)
        return True
    except redis.exceptions.ConnectionError:
        return False


def test_memcheck_outcome_writes_an_acl_refuses(tmp_path, redis_server, r):
    # The queued commands' refusals (queued_replies.c), a batch written again
    # without them, a job kept while its dead letter is refused, NS:events
    # left out, and the spent markers handed back by refused transactions.
    r.execute_command("ACL", "SETUSER", "u", "on", ">pw", f"~{NS}:[^d]*", "resetchannels",
                      f"&{NS}:[^e]*", "+@all", f"(~{NS}:* &{NS}:[^e]* +@all -xadd)")
    submit(r, {"id": "vbad", "type": "no-such-type"})
    for n in range(3):
        submit(r, {"id": f"vgood{n}", "type": "sleep", "ms": 1, "delay_ms": 50})
    daemon = Jobd(tmp_path, redis_server.port, redis__username="u", redis__password="pw")
    with under_memcheck(daemon, tmp_path):
        wait_results(r, [f"vgood{n}" for n in range(3)], timeout=60)
        wait_for(lambda: "ERROR job vbad: storing its result record or dead letter failed: "
                 "NOPERM" in daemon.log_text(), timeout=20, what="the refused dead letter")
        time.sleep(2)                   # written again, refused again
        r.execute_command("ACL", "SETUSER", "u", f"~{NS}:dead")
        wait_results(r, ["vbad"], timeout=30)
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(60)
    assert f"ERROR redis refused PUBLISH on {NS}:events" in daemon.log_text()
