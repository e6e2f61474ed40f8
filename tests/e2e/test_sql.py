"""PROTOCOL §3 sql jobs against a real PostgreSQL the test starts itself."""
import json
import os
import re
import signal
import time

import pytest

from conftest import (NS, SANITIZERS, cpu_seconds, free_port, result, stats, submit, wait_for,
                      wait_result, wait_results)
from delay_proxy import DelayProxy
from pg_server import PgServer
from test_admin import scrape

QUERIES = {
    "types": "SELECT 1::int2 AS i2, 2::int4 AS i4, 9007199254740993::int8 AS i8, "
             "1.5::float4 AS f4, 2.25::float8 AS f8, true AS b, '{\"a\":[1]}'::json AS j, "
             "'{\"k\":null}'::jsonb AS jb, 12.50::numeric AS n, 'txt'::text AS t, "
             "NULL::int AS nul, '2026-01-02'::date AS d, 'NaN'::float8 AS nan",
    "echo": "SELECT $1::text AS v",
    "add": "SELECT $1::int + $2::int AS sum",
    "insert": "INSERT INTO items(name) VALUES ($1) RETURNING id",
    "count": "SELECT count(*) AS n FROM items",
    "sleep": "SELECT pg_sleep($1::float8) AS slept",
    "big": "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, $1::int) g",
    "fail": "SELECT 1/0",
    "pid": "SELECT pg_backend_pid() AS pid",
    "nap": "SELECT pg_backend_pid() AS pid, pg_sleep($1::float8) AS slept",
    "later": "SELECT pg_backend_pid() AS pid, count(*) AS n FROM later",
}


@pytest.fixture
def pg(tmp_path):
    server = PgServer(tmp_path)
    server.psql("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
    yield server
    server.remove()


def config_for(pg, depth=1, **extra):
    settings = {"postgres__conninfo": pg.conninfo(), "postgres__min_size": 1,
                "postgres__max_size": 4, "postgres__pipeline": depth,
                "postgres__queries": QUERIES}
    settings.update(extra)
    return settings


def run(r, job_id, **fields):
    submit(r, dict(fields, id=job_id, type="sql"))
    return wait_result(r, job_id, timeout=20)


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_type_mapping_and_nulls(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    rec = run(r, "types", query="types")
    assert rec["status"] == "succeeded", rec
    row = rec["result"]["rows"][0]
    assert row == {"i2": 1, "i4": 2, "i8": 9007199254740993, "f4": 1.5, "f8": 2.25, "b": True,
                   "j": {"a": [1]}, "jb": {"k": None}, "n": "12.50", "t": "txt", "nul": None,
                   "d": "2026-01-02", "nan": "NaN"}
    assert rec["result"]["row_count"] == 1 and rec["result"]["command"] == "SELECT 1"


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_params_are_parameters_not_text(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    evil = "x'); DROP TABLE items; --"
    rec = run(r, "inj", query="echo", params=[evil])
    assert rec["result"]["rows"] == [{"v": evil}]
    rec = run(r, "ins", query="insert", params=[evil])
    assert rec["result"]["command"] == "INSERT 0 1" and rec["result"]["row_count"] == 1
    assert pg.psql("SELECT name FROM items") == evil        # the table is still there
    rec = run(r, "sum", query="add", params=[2, "40"])
    assert rec["result"]["rows"] == [{"sum": 42}]
    rec = run(r, "null", query="echo", params=[None])
    assert rec["result"]["rows"] == [{"v": None}]


def test_named_queries_only_unless_raw_allowed(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    rec = run(r, "raw", sql="SELECT 1")
    assert rec["status"] == "failed" and rec["error"]["code"] == "forbidden"
    rec = run(r, "unknown", query="nope")
    assert rec["status"] == "rejected" and rec["error"]["code"] == "invalid_job"


def test_raw_sql_when_allowed(r, pg, start_jobd):
    start_jobd(**config_for(pg, postgres__allow_raw_sql=True))
    rec = run(r, "raw", sql="SELECT $1::int * 2 AS x", params=[21])
    assert rec["result"]["rows"] == [{"x": 42}]


def test_json_nested_deeper_than_a_record_holds_comes_as_text(r, pg, start_jobd):
    # json and jsonb columns are embedded in the record as JSON; one nested
    # 2,040 deep made a record jansson (and jobctl) could not read back, the
    # record nesting it 4 levels further than the 2,048 jansson reads. Past
    # 2,032 levels (jsonw.h) such a value comes as its text instead.
    start_jobd(**config_for(pg, postgres__allow_raw_sql=True))
    deep = "[" * 2040 + "]" * 2040
    rec = run(r, "deep", sql="SELECT $1::json AS deep, '[[1]]'::jsonb AS shallow", params=[deep])
    assert rec["status"] == "succeeded", rec
    assert rec["result"]["rows"] == [{"deep": deep, "shallow": [[1]]}]


def test_text_that_is_not_utf8_fails_the_job_with_postgres_error(r, pg, start_jobd):
    # A SQL_ASCII database stores text unchecked, so it may not be UTF-8.
    # jobd asks for client_encoding UTF8, and PostgreSQL then refuses to send
    # such a value: the job fails with its error (22021), nothing is dropped
    # or mangled on the way, and the same column cast to bytea comes whole.
    pg.psql("CREATE DATABASE ascii ENCODING 'SQL_ASCII' TEMPLATE template0 "
            "LC_COLLATE 'C' LC_CTYPE 'C'")
    # Written unconverted too: a Latin-1 e-acute, then a UTF-8 one.
    pg.psql(r"SET client_encoding = 'SQL_ASCII'; CREATE TABLE t (t text); "
            r"INSERT INTO t VALUES (E'caf\xe9 \xc3\xa9')", db="ascii")
    conninfo = pg.conninfo().replace("dbname=postgres", "dbname=ascii")
    start_jobd(**config_for(pg, postgres__conninfo=conninfo, postgres__allow_raw_sql=True))
    rec = run(r, "latin1", sql="SELECT t, 'plain' AS u FROM t")
    assert rec["status"] == "failed" and rec["error"]["sqlstate"] == "22021", rec
    assert "invalid byte sequence" in rec["error"]["message"]
    rec = run(r, "bytes", sql="SELECT t::bytea AS t FROM t")
    assert rec["result"]["rows"] == [{"t": "\\x636166e920c3a9"}], rec


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_raw_sql_cannot_leave_its_session_to_the_next_jobs(r, pg, start_jobd, depth):
    # A raw BEGIN would leave the connection inside a transaction: the next
    # jobs' inserts there would report success and never commit. A raw SET
    # would change the next jobs' session. Such connections are closed.
    start_jobd(**config_for(pg, depth, postgres__allow_raw_sql=True, postgres__min_size=1,
                            postgres__max_size=1))
    assert run(r, "begin", sql="BEGIN")["result"]["command"] == "BEGIN"
    assert run(r, "ins", query="insert", params=["kept"])["status"] == "succeeded"
    assert pg.psql("SELECT count(*) FROM items WHERE name = 'kept'") == "1"
    assert run(r, "set", sql="SET application_name = 'tainted'")["status"] == "succeeded"
    rec = run(r, "name", sql="SELECT current_setting('application_name') AS a")
    assert rec["result"]["rows"] == [{"a": "jobd"}]
    # Plain raw queries keep their connection.
    pids = {run(r, f"p{i}", sql="SELECT pg_backend_pid() AS pid")["result"]["rows"][0]["pid"]
            for i in range(3)}
    assert len(pids) == 1


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_sql_error_carries_sqlstate_and_is_not_retried(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    rec = run(r, "div", query="fail", retry={"attempts": 3})
    assert rec["status"] == "failed" and rec["attempts"] == 1
    assert rec["error"]["code"] == "sql_error" and rec["error"]["sqlstate"] == "22012"


@pytest.mark.parametrize("copy", ["COPY (SELECT 1) TO STDOUT", "COPY items(name) FROM STDIN"],
                         ids=["to_stdout", "from_stdin"])
def test_copy_fails_its_job_and_the_daemon_goes_on(r, pg, start_jobd, copy):
    # PQgetResult answers PGRES_COPY_OUT/IN again and again, never NULL: the
    # loop read it forever at 100% CPU and every job stopped. COPY now fails
    # its own job at once (not retried: it would do the same again), the
    # query sent behind it on the connection is retried elsewhere, and other
    # jobs go on.
    daemon = start_jobd(**config_for(pg, 8, postgres__allow_raw_sql=True, postgres__max_size=1,
                                     postgres__queries=dict(QUERIES, copy=copy)))
    wait_for(lambda: jobd_connections(pg) == 1, what="the pool's connection")
    for job_id, spec in [("raw", {"sql": copy}), ("named", {"query": "copy"})]:
        t0 = time.monotonic()
        pipe = r.pipeline(transaction=False)     # one round: "behind" goes behind it
        for job in [dict(spec, id=job_id + "-copy", type="sql", retry={"attempts": 3}),
                    {"id": job_id + "-behind", "type": "sql", "query": "add", "params": [1, 2],
                     "retry": {"attempts": 3, "delay_ms": 100}}]:
            pipe.xadd(f"{NS}:queue", {"job": json.dumps(job)})
        pipe.execute()
        rec = wait_result(r, job_id + "-copy", timeout=10)
        assert rec["status"] == "failed" and rec["attempts"] == 1, rec
        assert rec["error"]["code"] == "invalid_job", rec
        assert "COPY is not supported" in rec["error"]["message"], rec
        rec = wait_result(r, job_id + "-behind", timeout=10)
        assert rec["status"] == "succeeded" and rec["result"]["rows"] == [{"sum": 3}], rec
        assert time.monotonic() - t0 < 5
    # The loop is free: it does not spin, and hash and sql jobs run.
    c0 = cpu_seconds(daemon.proc.pid)
    time.sleep(1)
    assert cpu_seconds(daemon.proc.pid) - c0 < 0.5
    submit(r, {"id": "h", "type": "hash", "data": "x"})
    assert wait_result(r, "h", timeout=5)["status"] == "succeeded"
    assert run(r, "after", query="add", params=[2, 2])["result"]["rows"] == [{"sum": 4}]


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_a_wrong_number_of_params_fails_at_once_and_keeps_the_connection(r, pg, start_jobd,
                                                                         depth):
    # PostgreSQL refuses the Bind with SQLSTATE 08P01 (protocol_violation),
    # whose class 08 is retried as a broken connection: the same params were
    # sent again and again. They are the producer's mistake (invalid_job,
    # the sqlstate kept), and the connection is fine and reused.
    start_jobd(**config_for(pg, depth, postgres__allow_raw_sql=True, postgres__max_size=1))
    pid = run(r, "pid", query="pid")["result"]["rows"][0]["pid"]
    retry = {"attempts": 3, "delay_ms": 100}
    for job_id, spec in [("fewer", {"query": "add", "params": [1]}),
                         ("more", {"query": "add", "params": [1, 2, 3]}),
                         ("raw", {"sql": "SELECT $1::int + $2::int AS sum", "params": [1]})]:
        rec = run(r, job_id, retry=retry, **spec)
        assert rec["status"] == "failed" and rec["attempts"] == 1, rec
        assert rec["error"]["code"] == "invalid_job" and rec["error"]["sqlstate"] == "08P01", rec
        assert rec["error"]["message"].startswith("sql.params: bind message supplies"), rec
    assert run(r, "again", query="pid")["result"]["rows"][0]["pid"] == pid


def test_server_notices_go_through_the_log(r, pg, start_jobd):
    # libpq's default printed server notices raw on stderr: no timestamp or
    # level, deaf to log.level, and a newline in a RAISE (job data here)
    # wrote a forged line. They are log lines now: the job named, debug
    # (a WARNING at info), cut at 300 bytes, at most 10 a second.
    pg.psql("CREATE FUNCTION shout(t text, n int, warn bool) RETURNS int LANGUAGE plpgsql AS "
            "$$BEGIN FOR i IN 1..n LOOP IF warn THEN RAISE WARNING '%', t; "
            "ELSE RAISE NOTICE '%', t; END IF; END LOOP; RETURN n; END$$")
    daemon = start_jobd(**config_for(pg, postgres__queries=dict(
        QUERIES, shout="SELECT shout($1, $2, $3) AS n")))
    forged = "\n2030-01-01T00:00:00.000Z ERROR FORGED LINE\n" + "x" * 1000
    assert run(r, "one", query="shout", params=[forged, 1, False])["status"] == "succeeded"
    wait_for(lambda: "FORGED" in daemon.log_text(), what="the notice in the log")
    [line] = [line for line in daemon.log_text().splitlines() if "FORGED" in line]
    assert re.fullmatch(r"\S+Z DEBUG job one: postgres NOTICE \(00000\):  2030-01-01T00:00:00"
                        r"\.000Z ERROR FORGED LINE x+\.\.\.", line), line
    assert len(line) < 400
    # A burst: ten logged, the rest counted.
    assert run(r, "many", query="shout", params=["loud", 1000, False])["status"] == "succeeded"
    wait_for(lambda: re.search(r"postgres: server notice\(s\): \d+ not logged", daemon.log_text()),
             what="the count")
    assert daemon.log_text().count("job many: postgres NOTICE (00000): loud") <= 20
    # At log.level info a NOTICE is not logged, a WARNING is.
    daemon.settings["log"]["level"] = "info"
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    time.sleep(1.1)     # a new second for the notice count
    assert run(r, "quiet", query="shout", params=["hush", 1, False])["status"] == "succeeded"
    assert run(r, "warn", query="shout", params=["beware", 1, True])["status"] == "succeeded"
    wait_for(lambda: "job warn: postgres WARNING (01000): beware" in daemon.log_text(),
             what="the warning at info")
    assert "hush" not in daemon.log_text()


def backends_running_sleep(pg):
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobd' "
                       "AND query LIKE '%pg_sleep%' AND state = 'active'"))


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_timeout_cancels_on_the_server(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    submit(r, {"id": "slow", "type": "sql", "query": "sleep", "params": [30],
               "timeout_ms": 500})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the query on the server")
    rec = wait_result(r, "slow")
    assert rec["status"] == "timed_out"
    wait_for(lambda: backends_running_sleep(pg) == 0, timeout=3, what="the backend to stop")
    # The connection went back to the pool and works.
    assert run(r, "after", query="add", params=[1, 1])["result"]["rows"] == [{"sum": 2}]


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_cancel_message_cancels_on_the_server(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    submit(r, {"id": "c", "type": "sql", "query": "sleep", "params": [30]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the query on the server")
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "c"}))
    assert wait_result(r, "c")["status"] == "cancelled"
    wait_for(lambda: backends_running_sleep(pg) == 0, timeout=3, what="the backend to stop")


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_result_size_cap(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    rec = run(r, "big", query="big", params=[200000], timeout_ms=20000)
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large"


def test_pool_grows_to_max_and_queues(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    ids = [f"p{i}" for i in range(8)]
    for i in ids:
        submit(r, {"id": i, "type": "sql", "query": "sleep", "params": [5]})
    wait_for(lambda: backends_running_sleep(pg) == 4, what="4 busy connections (max_size)")
    time.sleep(0.1)
    assert backends_running_sleep(pg) == 4
    # The pool's state is in the worker heartbeat (refreshed every 3 s): the
    # first wave's 5 s leave room for a late refresh.
    def pool_state():
        snap = json.loads(r.get(r.keys(f"{NS}:worker:*")[0]))
        return snap["postgres"]["busy"] == 4 and snap["postgres"]["waiting"] == 4
    wait_for(pool_state, timeout=4.5, what="busy 4, waiting 4 in the heartbeat")
    recs = wait_results(r, ids, timeout=30)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    starts = sorted(rec["started_at"] for rec in recs.values())
    ends = sorted(rec["finished_at"] for rec in recs.values())
    assert ends[-1] - starts[0] >= 10000    # two waves of four


def jobd_connections(pg):
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobd'"))


def test_pool_shrinks_back_to_min_size(r, pg, start_jobd):
    start_jobd(**config_for(pg, postgres__idle_timeout_ms=300))
    wait_for(lambda: jobd_connections(pg) == 1, what="min_size connections")
    ids = [f"s{i}" for i in range(4)]
    for i in ids:
        submit(r, {"id": i, "type": "sql", "query": "sleep", "params": [0.3]})
    wait_for(lambda: jobd_connections(pg) == 4, what="growth to 4")
    wait_results(r, ids)
    wait_for(lambda: jobd_connections(pg) == 1, timeout=5, what="shrink back to 1")


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_server_restart_under_load_loses_nothing(r, pg, start_jobd, depth):
    start_jobd(**config_for(pg, depth))
    ids = [f"r{i}" for i in range(100)]
    for i in ids[:50]:
        submit(r, {"id": i, "type": "sql", "query": "insert", "params": [i],
                   "retry": {"attempts": 10, "delay_ms": 200, "max_delay_ms": 1000}})
    time.sleep(0.2)
    pg.stop("immediate")
    time.sleep(1)
    pg.start()
    for i in ids[50:]:
        submit(r, {"id": i, "type": "sql", "query": "insert", "params": [i],
                   "retry": {"attempts": 10, "delay_ms": 200, "max_delay_ms": 1000}})
    recs = wait_results(r, ids, timeout=60)
    assert all(rec["status"] == "succeeded" for rec in recs.values()), \
        [rec for rec in recs.values() if rec["status"] != "succeeded"][:3]
    # Each id's row exists (a retried insert may have committed before the
    # crash: at-least-once, so duplicates are possible and counted).
    names = pg.psql("SELECT name FROM items").split("\n")
    assert set(ids) <= set(names)
    print(f"jobs: 100, lost: 0, rows duplicated by redelivery: {len(names) - len(set(names))}")


def test_server_down_is_unavailable_then_recovers(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    assert run(r, "before", query="add", params=[1, 1])["status"] == "succeeded"
    pg.stop("fast")
    rec = run(r, "down", query="add", params=[1, 1], retry={"attempts": 1})
    assert rec["status"] == "failed" and rec["error"]["code"] == "unavailable", rec
    assert "PostgreSQL" in rec["error"]["message"]
    pg.start()
    # The pool reconnects on its own (backoff capped at 5 s).
    rec = run(r, "after", query="add", params=[2, 2],
              retry={"attempts": 10, "delay_ms": 300, "max_delay_ms": 1000})
    assert rec["status"] == "succeeded" and rec["result"]["rows"] == [{"sum": 4}], rec


def pool_metrics(base):
    samples = scrape(base)
    return samples["jobd_postgres_inflight"], samples["jobd_postgres_waiting"]


def with_admin():
    port = free_port()
    return {"admin__listen": f"127.0.0.1:{port}"}, f"http://127.0.0.1:{port}"


def test_pipeline_sends_queries_without_waiting_for_answers(r, pg, start_jobd):
    # One connection, pipeline 4: four slow queries are all on the wire at
    # once (inflight 4, none waiting), and run one after another.
    admin, base = with_admin()
    start_jobd(**config_for(pg, 4, postgres__max_size=1, **admin))
    wait_for(lambda: jobd_connections(pg) == 1, what="the pool's connection")
    ids = [f"q{i}" for i in range(4)]
    for i in ids:
        submit(r, {"id": i, "type": "sql", "query": "sleep", "params": [1]})
    # Seen while the first query runs (1 s); once it ends, 3 are left in
    # flight and (4, 0) never comes again, so a longer wait proves no less.
    wait_for(lambda: pool_metrics(base) == (4, 0), timeout=5,
             what="4 queries in flight on one connection, none waiting")
    assert jobd_connections(pg) == 1
    recs = wait_results(r, ids)
    assert all(rec["status"] == "succeeded" for rec in recs.values())


def test_pipeline_isolates_errors_and_settings(r, pg, start_jobd):
    # Many queries down two pipelined connections: each has its own
    # transaction (one's error aborts no other), timeouts change between
    # queries (SET steps inside the pipeline), a prepare is sent once.
    start_jobd(**config_for(pg, 16, postgres__max_size=2, postgres__min_size=2))
    wait_for(lambda: jobd_connections(pg) == 2, what="2 connections")
    jobs = {}
    for i in range(600):
        if i % 7 == 0:
            jobs[f"e{i}"] = {"query": "fail"}
        elif i % 5 == 0:
            jobs[f"t{i}"] = {"query": "add", "params": [i, 1], "timeout_ms": 10000 + i}
        else:
            jobs[f"a{i}"] = {"query": "add", "params": [i, 1]}
    pipe = r.pipeline(transaction=False)
    for job_id, spec in jobs.items():
        pipe.xadd(f"{NS}:queue", {"job": json.dumps(dict(spec, id=job_id, type="sql"))})
    pipe.execute()
    recs = wait_results(r, list(jobs), timeout=60)
    for job_id, rec in recs.items():
        if job_id[0] == "e":
            assert rec["status"] == "failed" and rec["error"]["sqlstate"] == "22012", rec
        else:
            assert rec["status"] == "succeeded", rec
            assert rec["result"]["rows"] == [{"sum": int(job_id[1:]) + 1}], rec
    assert jobd_connections(pg) == 2


def test_pipeline_cancel_and_timeout_stop_only_their_query(r, pg, start_jobd):
    admin, base = with_admin()
    start_jobd(**config_for(pg, 4, postgres__max_size=1, **admin))
    submit(r, {"id": "slow", "type": "sql", "query": "sleep", "params": [30]})
    submit(r, {"id": "behind", "type": "sql", "query": "add", "params": [1, 2]})
    submit(r, {"id": "queued-cancel", "type": "sql", "query": "sleep", "params": [30]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the first query on the server")
    wait_for(lambda: pool_metrics(base)[0] == 3, what="3 in flight")
    # Cancelled while queued behind the running one: stopped when it starts.
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "queued-cancel"}))
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "slow"}))
    assert wait_result(r, "slow")["status"] == "cancelled"
    assert wait_result(r, "behind")["result"]["rows"] == [{"sum": 3}]
    assert wait_result(r, "queued-cancel")["status"] == "cancelled"
    wait_for(lambda: backends_running_sleep(pg) == 0, timeout=3, what="the backends to stop")
    # A timeout at the head of a pipeline: the query behind it still answers.
    submit(r, {"id": "late", "type": "sql", "query": "sleep", "params": [30], "timeout_ms": 500})
    submit(r, {"id": "next", "type": "sql", "query": "add", "params": [2, 2]})
    assert wait_result(r, "late")["status"] == "timed_out"
    assert wait_result(r, "next")["result"]["rows"] == [{"sum": 4}]
    wait_for(lambda: backends_running_sleep(pg) == 0, timeout=3, what="the backend to stop")


def test_a_query_queued_behind_a_slow_one_ends_at_its_own_timeout(r, pg, start_jobd):
    # Sent down the pipeline behind a 3 s query, it used to wait for that
    # one, its own 500 ms timeout ignored; and a cancel was only noted.
    start_jobd(**config_for(pg, 4, postgres__min_size=1, postgres__max_size=1))
    submit(r, {"id": "slow", "type": "sql", "query": "sleep", "params": [3]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the slow query running")
    submit(r, {"id": "behind", "type": "sql", "query": "add", "params": [1, 2],
               "timeout_ms": 500, "retry": {"attempts": 1}})
    submit(r, {"id": "cancelled", "type": "sql", "query": "add", "params": [1, 2]})
    time.sleep(0.2)
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "cancelled"}))
    rec = wait_result(r, "behind", timeout=10)
    assert rec["status"] == "timed_out" and rec["finished_at"] - rec["started_at"] < 1500, rec
    rec = wait_result(r, "cancelled", timeout=10)
    assert rec["status"] == "cancelled", rec
    assert not r.exists(f"{NS}:result:slow")
    assert wait_result(r, "slow")["status"] == "succeeded"
    assert run(r, "after", query="add", params=[2, 2])["result"]["rows"] == [{"sum": 4}]


def test_an_id_reused_while_its_stand_in_waits_its_turn(r, pg, start_jobd):
    # Two jobs with one id, different queries, both timed out while queued
    # behind a slow one: the second's stand-in replaces the first's as the
    # one kept for the id. The first's was freed while still in the
    # pipeline, and its answer then written into freed memory (ASan: a
    # use after free). It now goes when its answer comes.
    daemon = start_jobd(**config_for(pg, 4, postgres__min_size=1, postgres__max_size=1))
    submit(r, {"id": "slow", "type": "sql", "query": "sleep", "params": [2]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the slow query running")
    retry = {"attempts": 2, "delay_ms": 5000, "max_delay_ms": 5000, "jitter": False}
    submit(r, {"id": "reused", "type": "sql", "query": "insert", "params": ["first"],
               "timeout_ms": 200, "retry": retry})
    wait_for(lambda: "job reused: attempt 1 failed" in daemon.log_text(), what="the first")
    submit(r, {"id": "reused", "type": "sql", "query": "add", "params": [1, 2],
               "timeout_ms": 200, "retry": retry})
    wait_for(lambda: daemon.log_text().count("job reused: attempt 1 failed") == 2,
             what="the second")
    assert wait_result(r, "slow")["status"] == "succeeded"
    assert run(r, "after", query="add", params=[2, 2])["result"]["rows"] == [{"sum": 4}]
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("slow_s,timeout_ms,delay_ms", [(3, 2000, 100), (1, 400, 1000)],
                         ids=["retry_waits", "answer_kept"])
def test_a_timed_out_insert_queued_behind_a_slow_one_runs_once(r, pg, start_jobd, slow_s,
                                                               timeout_ms, delay_ms):
    # A statement sent down a pipeline cannot be taken back: the server runs
    # it after the slow one, and the retry ran it again (two rows). The
    # retry now waits for what became of the first (retry_waits: it comes
    # while the slow one still runs) or finds it kept (answer_kept: it comes
    # after), and takes its answer when it ran to its end, else runs it: one
    # row either way, and the job succeeds.
    start_jobd(**config_for(pg, 4, postgres__min_size=1, postgres__max_size=1))
    submit(r, {"id": "slow", "type": "sql", "query": "sleep", "params": [slow_s]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the slow query running")
    submit(r, {"id": "ins", "type": "sql", "query": "insert", "params": ["once"],
               "timeout_ms": timeout_ms, "retry": {"attempts": 2, "delay_ms": delay_ms,
                                                   "max_delay_ms": delay_ms, "jitter": False}})
    rec = wait_result(r, "ins", timeout=15)
    assert rec["status"] == "succeeded" and rec["attempts"] == 2, rec
    assert wait_result(r, "slow")["status"] == "succeeded"
    assert pg.psql("SELECT count(*) FROM items WHERE name = 'once'") == "1"


def log_ids(daemon, pattern):
    """The job ids of the daemon's log lines "job <id>: PATTERN..."."""
    return re.findall(r"job (\S+): " + re.escape(pattern), daemon.log_text())


def test_past_1000_stand_ins_kept_a_retry_runs_its_query_again(r, pg, start_jobd):
    # 1,005 inserts time out queued behind slow queries on 4 connections: a
    # stand-in takes each one's place. 1,000 are kept for their retries
    # (STAND_INS_MAX); the last 5 are not, and say so. The cancels go through
    # a proxy that delays them, so every statement runs to its end: a
    # retry that takes a kept answer leaves one row, one whose stand-in was
    # not kept runs its insert again (two rows). Nothing crashes, every job
    # succeeds, and the daemon's memory stays where it was.
    n = 1005
    with DelayProxy(pg.port, delay=0) as proxy:
        daemon = start_jobd(**config_for(pg, 256, postgres__conninfo=via(proxy),
                                         postgres__min_size=4, postgres__max_size=4,
                                         limits__max_inflight=2000))
        wait_for(lambda: jobd_connections(pg) == 4, what="4 connections")
        assert run(r, "first", query="insert", params=["first"])["status"] == "succeeded"
        rss_before = rss_kb(daemon.proc.pid)
        proxy.connect_delay = 4.0
        submit_round(r, [f"slow{i}" for i in range(4)], query="nap", params=[1.5])
        wait_for(lambda: backends_running_sleep(pg) == 4, what="4 slow queries running")
        ids = [f"s{i:04d}" for i in range(n)]
        started = time.monotonic()
        pipe = r.pipeline(transaction=False)
        for i in ids:
            pipe.xadd(f"{NS}:queue", {"job": json.dumps({
                "id": i, "type": "sql", "query": "insert", "params": [i], "timeout_ms": 300,
                "retry": {"attempts": 2, "delay_ms": 3000, "max_delay_ms": 3000,
                          "jitter": False}})})
        pipe.execute()
        recs = wait_results(r, ids, timeout=30)
        took = time.monotonic() - started
        assert all(rec["status"] == "succeeded" and rec["attempts"] == 2
                   for rec in recs.values()), [rec for rec in recs.values()
                                               if rec["status"] != "succeeded"][:3]
        not_kept = log_ids(daemon, "what its attempt's query does is not kept for a retry "
                                   "(1000 kept already")
        taken = log_ids(daemon, "the query its attempt before gave up on ran to its end")
        assert len(not_kept) == n - 1000 and len(taken) == 1000, (len(not_kept), len(taken))
        assert not set(not_kept) & set(taken)
        rows = dict(line.split("|") for line in pg.psql(
            "SELECT name, count(*) FROM items WHERE name LIKE 's%' GROUP BY name").split())
        assert len(rows) == n
        assert all(rows[i] == "1" for i in taken)
        assert all(rows[i] == "2" for i in not_kept), {i: rows[i] for i in not_kept}
        assert daemon.proc.poll() is None
        if not SANITIZERS:      # ASan's quarantine holds freed memory
            assert rss_kb(daemon.proc.pid) - rss_before < 32 * 1024
        print(f"{n} timeouts and their retries in {took:.1f} s")


def test_past_64_mib_of_kept_answers_a_retry_runs_its_query_again(r, pg, start_jobd):
    # Six queries, each inserting a row and answering ~15 MB of rows, time
    # out queued behind a slow one; their statements then run to their end
    # (the cancels are delayed by the proxy). The first four answers are
    # kept for the retries (60 MB); the fifth and sixth would pass 64 MiB
    # (STAND_IN_BYTES_MAX): not kept, said so, and their retries run the
    # statement again.
    wide = ("WITH ins AS (INSERT INTO items(name) VALUES ($1) RETURNING id) "
            "SELECT g, repeat('x', $2::int) AS pad FROM ins, generate_series(1, $3::int) g")
    with DelayProxy(pg.port, delay=0) as proxy:
        daemon = start_jobd(**config_for(pg, 8, postgres__conninfo=via(proxy),
                                         postgres__min_size=1, postgres__max_size=1,
                                         postgres__queries=dict(QUERIES, wide=wide)))
        wait_for(lambda: jobd_connections(pg) == 1, what="the connection")
        assert run(r, "first", query="wide", params=["first", 15000, 1000])["status"] == \
            "succeeded"
        proxy.connect_delay = 5.0
        # The retries write 15 MB records from the loop, and the two run
        # again share the connection: seconds under ASan.
        timeout_ms = 10000 if SANITIZERS else 3000
        submit(r, {"id": "slow", "type": "sql", "query": "nap", "params": [timeout_ms / 1000 + 2]})
        wait_for(lambda: backends_running_sleep(pg) == 1, what="the slow query running")
        ids = [f"w{i}" for i in range(6)]
        for i in ids:
            submit(r, {"id": i, "type": "sql", "query": "wide", "params": [i, 15000, 1000],
                       "timeout_ms": timeout_ms, "retry": {"attempts": 2, "delay_ms": 4000,
                                                           "max_delay_ms": 4000,
                                                           "jitter": False}})
        recs = wait_results(r, ids, timeout=30)
        assert all(rec["status"] == "succeeded" and rec["attempts"] == 2 and
                   len(rec["result"]["rows"]) == 1000 for rec in recs.values()), \
            {i: rec["status"] for i, rec in recs.items()}
        not_kept = log_ids(daemon, "the answer of a query its attempt gave up on is not kept")
        taken = log_ids(daemon, "the query its attempt before gave up on ran to its end")
        assert sorted(not_kept) == ids[4:] and sorted(taken) == ids[:4], (not_kept, taken)
        rows = dict(line.split("|") for line in pg.psql(
            "SELECT name, count(*) FROM items WHERE name LIKE 'w_' GROUP BY name").split())
        assert rows == {"w0": "1", "w1": "1", "w2": "1", "w3": "1", "w4": "2", "w5": "2"}
        assert daemon.proc.poll() is None


def test_params_of_kept_stand_ins_count_toward_the_64_mib(r, pg, start_jobd):
    # A kept stand-in holds a copy of its job's params after the job is
    # gone, up to limits.max_job_bytes each: 1,000 of them could hold
    # gigabytes for 10 minutes. They count toward the 64 MiB now. Twenty
    # inserts with a 4 MB param each time out queued behind a slow query:
    # sixteen are kept (64 MB), the last four to time out not (said so), and
    # their retries run the insert again. (Submitting 80 MB takes seconds on
    # a busy machine: the slow query gives it 8.)
    big = "x" * 4000000
    queries = dict(QUERIES, tag="INSERT INTO items(name) SELECT $1 WHERE length($2) > 0 "
                                "RETURNING id")
    with DelayProxy(pg.port, delay=0) as proxy:
        daemon = start_jobd(**config_for(pg, 32, postgres__conninfo=via(proxy),
                                         postgres__min_size=1, postgres__max_size=1,
                                         postgres__queries=queries,
                                         limits__max_job_bytes=8 << 20))
        wait_for(lambda: jobd_connections(pg) == 1, what="the connection")
        proxy.connect_delay = 5.0
        submit(r, {"id": "slow", "type": "sql", "query": "nap", "params": [8]})
        wait_for(lambda: backends_running_sleep(pg) == 1, what="the slow query running")
        ids = [f"b{i:02d}" for i in range(20)]
        for i in ids:
            submit(r, {"id": i, "type": "sql", "query": "tag", "params": [i, big],
                       "timeout_ms": 1000, "retry": {"attempts": 2, "delay_ms": 8000,
                                                     "max_delay_ms": 8000, "jitter": False}})
        recs = wait_results(r, ids, timeout=40)
        assert all(rec["status"] == "succeeded" and rec["attempts"] == 2
                   for rec in recs.values()), {i: rec["status"] for i, rec in recs.items()}
        not_kept = log_ids(daemon, "what its attempt's query does is not kept for a retry")
        taken = log_ids(daemon, "the query its attempt before gave up on ran to its end")
        assert len(not_kept) == 4 and len(taken) == 16, (not_kept, taken)
        assert sorted(not_kept + taken) == ids
        rows = dict(line.split("|") for line in pg.psql(
            "SELECT name, count(*) FROM items WHERE name LIKE 'b__' GROUP BY name").split())
        assert rows == {i: "1" if i in taken else "2" for i in ids}
        assert daemon.proc.poll() is None


def submit_round(r, ids, query="pid", params=None):
    """The jobs of IDS added in one round trip, as a producer's batch."""
    pipe = r.pipeline(transaction=False)
    job = {"type": "sql", "query": query}
    if params is not None:
        job["params"] = params
    for i in ids:
        pipe.xadd(f"{NS}:queue", {"job": json.dumps(dict(job, id=i))})
    pipe.execute()


def backend_pids(recs):
    return {rec["result"]["rows"][0]["pid"] for rec in recs.values()}


@pytest.mark.parametrize("pack_us", [5000000, 0], ids=["packed", "spread"])
def test_pipeline_packs_quick_queries_on_a_busy_connection(r, pg, start_jobd, pack_us):
    # Four connections, pipeline 8. Rounds of 6 quick queries: with a packing
    # budget (generous here, so a slow sanitizer build still packs) each round
    # wakes one backend; without one (0) a round spreads over idle connections.
    start_jobd(**config_for(pg, 8, postgres__min_size=4, postgres__pipeline_pack_us=pack_us))
    wait_for(lambda: jobd_connections(pg) == 4, what="4 connections")
    assert run(r, "first", query="pid")["status"] == "succeeded"   # its run time is now known
    per_round = []
    for n in range(5):
        ids = [f"p{n}.{i}" for i in range(6)]
        submit_round(r, ids)
        per_round.append(backend_pids(wait_results(r, ids)))
    if pack_us:
        assert all(len(pids) == 1 for pids in per_round), per_round
    else:
        assert max(len(pids) for pids in per_round) > 1, per_round


def via(proxy):
    """conninfo reaching the test's PostgreSQL through PROXY."""
    return f"hostaddr=127.0.0.1 port={proxy.port} dbname=postgres user=postgres"


def test_pipeline_packs_quick_queries_behind_a_slow_round_trip(r, pg, start_jobd):
    # Through a proxy that delays each direction by 25 ms, a quick query takes
    # 50 ms sent alone, over the 20 ms budget, but adds only its run time to
    # a query queued behind it. Packing goes by the latter, learnt from a
    # probe: after the first round, rounds of 6 wake one backend again.
    # (Going by the 50 ms, every round spread over the four connections.)
    with DelayProxy(pg.port, delay=0.025) as proxy:
        start_jobd(**config_for(pg, 8, postgres__conninfo=via(proxy), postgres__min_size=4,
                                postgres__pipeline_pack_us=20000))
        wait_for(lambda: jobd_connections(pg) == 4, what="4 connections")
        assert run(r, "first", query="pid")["status"] == "succeeded"   # alone: ~50 ms
        per_round = []
        for n in range(6):
            ids = [f"p{n}.{i}" for i in range(6)]
            submit_round(r, ids)
            per_round.append(backend_pids(wait_results(r, ids)))
        assert len(per_round[0]) > 1, per_round     # the round trip alone: spread, one probe
        assert all(len(pids) == 1 for pids in per_round[2:]), per_round


def test_pipeline_probes_nothing_with_packing_off(r, pg, start_jobd):
    # postgres.pipeline_pack_us = 0 turns packing off, probes included.
    # Through the same 25 ms proxy the three queries of a round are all in
    # flight at once, and each takes an idle connection of the four: none is
    # sent behind another to learn what it would add there.
    with DelayProxy(pg.port, delay=0.025) as proxy:
        start_jobd(**config_for(pg, 8, postgres__conninfo=via(proxy), postgres__min_size=4,
                                postgres__pipeline_pack_us=0))
        wait_for(lambda: jobd_connections(pg) == 4, what="4 connections")
        assert run(r, "first", query="pid")["status"] == "succeeded"
        per_round = []
        for n in range(3):
            ids = [f"p{n}.{i}" for i in range(3)]
            submit_round(r, ids)
            per_round.append(backend_pids(wait_results(r, ids)))
        assert all(len(pids) == 3 for pids in per_round), per_round


def query_seconds(base, query, sent):
    return scrape(base).get(f'jobd_postgres_query_seconds{{query="{query}",sent="{sent}"}}')


def probes(base):
    return scrape(base)["jobd_postgres_probes_total"]


def test_run_time_behind_leaves_out_the_send_gap(r, pg, start_jobd):
    # One connection through a 50 ms proxy. "echo" goes 20 ms after "pid",
    # behind it on the wire: the server runs it at once, yet its answer comes
    # 20 ms after pid's. What it adds to the wait behind it is its run on the
    # server; counting the 20 ms (a producer's pause, not the query) would put
    # it over the 10 ms budget and stop packing it. (The 100 ms round trip
    # keeps pid in flight when echo goes, however late a loaded machine
    # sends it; with 50 ms, 30 ms of lateness sent echo alone.)
    admin, base = with_admin()
    with DelayProxy(pg.port, delay=0.05) as proxy:
        start_jobd(**config_for(pg, 8, postgres__conninfo=via(proxy), postgres__max_size=1,
                                postgres__pipeline_pack_us=10000, **admin))
        assert run(r, "first", query="pid")["status"] == "succeeded"
        assert query_seconds(base, "pid", "alone") >= 0.095      # the round trip is in it
        for n in range(4):
            submit(r, {"id": f"a{n}", "type": "sql", "query": "pid"})
            time.sleep(0.02)
            submit(r, {"id": f"b{n}", "type": "sql", "query": "echo", "params": ["x"]})
            recs = wait_results(r, [f"a{n}", f"b{n}"])
            assert all(rec["status"] == "succeeded" for rec in recs.values()), recs
        behind = query_seconds(base, "echo", "behind")
        assert behind is not None and behind < 0.010, behind
        assert query_seconds(base, "echo", "alone") is None     # never sent alone


def test_pipeline_probes_again_once_a_second_and_packs_when_quick_again(r, pg, start_jobd):
    # Through the 25 ms proxy, "nap" alone takes 50 ms and more, over the
    # 20 ms budget, so only a probe learns what it adds behind another. At
    # 40 ms it is not packed. Quick again, rounds of three spread over the
    # four connections (none goes behind by itself), until a probe a second
    # later measures it again; the average falls by a quarter of the way per
    # sample, so a few probes bring it under the budget and rounds pack.
    admin, base = with_admin()
    with DelayProxy(pg.port, delay=0.025) as proxy:
        start_jobd(**config_for(pg, 8, postgres__conninfo=via(proxy), postgres__min_size=4,
                                postgres__pipeline_pack_us=20000, **admin))
        wait_for(lambda: jobd_connections(pg) == 4, what="4 connections")
        assert run(r, "alone", query="nap", params=[0.04])["status"] == "succeeded"
        submit_round(r, ["slow.0", "slow.1"], query="nap", params=[0.04])
        wait_results(r, ["slow.0", "slow.1"])       # the second one the first probe
        # Taken at once: the daemon's second counts from that probe's answer,
        # which came a little before this (the result's write, the polling).
        probed_at = time.monotonic()
        assert probes(base) == 1
        assert query_seconds(base, "nap", "behind") >= 0.030
        rounds = []                     # (seconds since that probe: sent, done; backends)
        while time.monotonic() - probed_at < 10:
            ids = [f"q{len(rounds)}.{i}" for i in range(3)]
            sent = time.monotonic() - probed_at
            submit_round(r, ids, query="nap", params=[0])
            n = len(backend_pids(wait_results(r, ids)))
            rounds.append((sent, time.monotonic() - probed_at, n))
            if n == 1:
                break
        assert rounds[-1][2] == 1, rounds                           # packed again
        # No probe within the second: rounds sent well inside it (by the
        # test's clock, which starts late and reads the intake's delay as 0).
        assert all(n == 3 for s, d, n in rounds if s < 0.7), rounds
        assert rounds[-1][1] >= 2, rounds                           # it took more than one probe
        assert probes(base) >= 3
        assert query_seconds(base, "nap", "behind") < 0.020


def test_pipeline_packs_nothing_behind_a_slow_query(r, pg, start_jobd):
    # A query whose run time is unknown (never ran) or above the budget is not
    # queued behind: quick queries arriving while it runs take other
    # connections and finish long before it.
    start_jobd(**config_for(pg, 8, postgres__min_size=4, postgres__pipeline_pack_us=500000))
    wait_for(lambda: jobd_connections(pg) == 4, what="4 connections")
    assert run(r, "first", query="pid")["status"] == "succeeded"
    for n in range(2):      # unknown the first time, measured at 3 s the second
        submit(r, {"id": f"slow{n}", "type": "sql", "query": "sleep", "params": [3]})
        wait_for(lambda: backends_running_sleep(pg) == 1, what="the slow query running")
        sleeper = int(pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'jobd' "
                              "AND query LIKE '%pg_sleep%' AND state = 'active'"))
        ids = [f"q{n}.{i}" for i in range(6)]
        submit_round(r, ids)
        recs = wait_results(r, ids, timeout=2.5)
        assert sleeper not in backend_pids(recs)
        assert not r.exists(f"{NS}:result:slow{n}")     # still running
        assert wait_result(r, f"slow{n}")["status"] == "succeeded"


def test_sql_off_without_conninfo(r, start_jobd):
    start_jobd()
    rec = run(r, "off", query="x")
    assert rec["status"] == "failed" and rec["error"]["code"] == "unavailable"
    assert stats(r)["sql.failed"] == 1


def test_reload_changes_the_text_of_a_named_query(r, pg, start_jobd):
    # Connections prepared the old text; after SIGHUP they must run the new
    # one (the statement name carries a hash of the text), also when its
    # parameters changed.
    daemon = start_jobd(**config_for(pg, postgres__min_size=1, postgres__max_size=1))
    assert run(r, "v1", query="add", params=[1, 1])["result"]["rows"] == [{"sum": 2}]
    daemon.settings["postgres"]["queries"] = dict(QUERIES, add="SELECT $1::int * 10 AS sum")
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    rec = run(r, "v2", query="add", params=[3])
    assert rec["status"] == "succeeded" and rec["result"]["rows"] == [{"sum": 30}], rec


def test_query_run_times_on_the_admin_endpoint_follow_the_configuration(r, pg, start_jobd):
    # Each query that ran shows its measured time sent alone; raw SQL as
    # query="". A query a reload removed is no longer shown.
    admin, base = with_admin()
    daemon = start_jobd(**config_for(pg, postgres__allow_raw_sql=True, **admin))
    assert run(r, "named", query="add", params=[1, 1])["status"] == "succeeded"
    assert run(r, "raw", sql="SELECT 1 AS one")["status"] == "succeeded"
    assert query_seconds(base, "add", "alone") > 0
    assert query_seconds(base, "", "alone") > 0
    assert query_seconds(base, "echo", "alone") is None     # never ran
    daemon.settings["postgres"]["queries"] = {k: v for k, v in QUERIES.items() if k != "add"}
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    assert query_seconds(base, "add", "alone") is None
    assert query_seconds(base, "", "alone") > 0


def test_group_of_queries_on_a_connection_that_dies(r, pg, start_jobd):
    # Two queries of one group pipelined on the only connection; the backend
    # is killed. The first child's failure stops its sibling while the
    # connection is being torn down (the sibling's query must no longer point
    # at it: the ASan pass of the suite catches a use after free here).
    start_jobd(**config_for(pg, depth=8, postgres__min_size=1, postgres__max_size=1))
    submit(r, {"id": "g", "type": "group", "mode": "all", "retry": {"attempts": 1}, "jobs": [
        {"type": "sql", "query": "sleep", "params": [30]},
        {"type": "sql", "query": "sleep", "params": [30]}]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the first query running")
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'jobd'")
    rec = wait_result(r, "g")
    assert rec["status"] == "failed", rec
    # The pool opens a new connection and serves the next job.
    assert run(r, "after", query="add", params=[2, 2])["result"]["rows"] == [{"sum": 4}]


def test_a_cancel_delivered_late_does_not_fail_the_next_query(r, pg, start_jobd):
    # The cancel for a timed-out query reaches the server late (it comes on
    # a connection of its own, here held back 2 s by the proxy); meanwhile
    # that query ends (statement_timeout) and the next job's query starts on
    # the same connection, and the late cancel stops it. That job did
    # nothing wrong: its query runs again and succeeds.
    with DelayProxy(pg.port, delay=0) as proxy:
        daemon = start_jobd(**config_for(pg, postgres__conninfo=via(proxy), postgres__min_size=1,
                                         postgres__max_size=1))
        wait_for(lambda: jobd_connections(pg) == 1, what="the connection")
        proxy.connect_delay = 2.0
        submit(r, {"id": "a", "type": "sql", "query": "sleep", "params": [30], "timeout_ms": 200})
        assert wait_result(r, "a")["status"] == "timed_out"
        submit(r, {"id": "b", "type": "sql", "query": "sleep", "params": [4]})
        rec = wait_result(r, "b", timeout=30)
        assert rec["status"] == "succeeded", rec
        # b really was stopped by a's cancel, and sent again.
        assert "query sleep was stopped by a cancel meant for the query before it; sending it " \
            "again" in daemon.log_text()


def test_the_size_cap_counts_the_result_as_json(r, pg, start_jobd):
    # 16 MiB counted values plus 8 bytes a field: column names repeated in
    # every row and the JSON around them were left out, so 1390 rows of 1500
    # NULL columns with 56-byte names passed as 16.7 MB, made a 134 MB
    # record and took 800 MB on the way. The cap is now on the JSON text:
    # 64 bytes a field here, so 170 rows fit (just under 16 MiB), 1390 do not
    # and are stopped after about 175.
    cols = ", ".join(f"NULL::int AS c{i:04d}_" + "x" * 50 for i in range(1500))
    daemon = start_jobd(**config_for(pg, postgres__allow_raw_sql=True))
    rec = run(r, "fits", sql=f"SELECT {cols} FROM generate_series(1, 170)", timeout_ms=60000)
    assert rec["status"] == "succeeded" and rec["result"]["row_count"] == 170
    rows = len(json.dumps(rec["result"]["rows"], separators=(",", ":")))
    assert 16_000_000 < rows <= 16 * 1024 * 1024, rows
    base = rss_kb(daemon.proc.pid)
    submit(r, {"id": "wide", "type": "sql", "sql": f"SELECT {cols} FROM generate_series(1, 1390)",
               "timeout_ms": 60000})
    peak = peak_rss_kb_until_result(r, daemon, "wide")
    rec = wait_result(r, "wide")
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large", rec["status"]
    if not SANITIZERS:
        assert peak - base < 120000, (base, peak)


def test_a_timed_out_insert_that_ran_to_its_end_anyway_is_not_run_again(r, pg, start_jobd):
    # The cancel for a timed-out INSERT comes late (on a connection of its
    # own, held back 2 s by the proxy), so the INSERT ends first and
    # commits. The attempt is still timed_out; its retry used to insert a
    # second row. It takes the answer of the first now.
    with DelayProxy(pg.port, delay=0) as proxy:
        daemon = start_jobd(**config_for(pg, postgres__conninfo=via(proxy), postgres__min_size=1,
                                         postgres__max_size=1, postgres__queries=dict(
                                             QUERIES, slow_insert="INSERT INTO items(name) "
                                             "SELECT $1 FROM pg_sleep(0.9) RETURNING id")))
        wait_for(lambda: jobd_connections(pg) == 1, what="the connection")
        proxy.connect_delay = 2.0
        submit(r, {"id": "ins", "type": "sql", "query": "slow_insert", "params": ["once"],
                   "timeout_ms": 700, "retry": {"attempts": 2, "delay_ms": 100}})
        rec = wait_result(r, "ins", timeout=15)
        assert rec["status"] == "succeeded" and rec["attempts"] == 2, rec
        assert rec["result"]["command"] == "INSERT 0 1", rec
        assert pg.psql("SELECT count(*) FROM items WHERE name = 'once'") == "1"
        assert "job ins: the query its attempt before gave up on ran to its end" in \
            daemon.log_text()


def sleeping_backend(pg):
    return int(pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'jobd' "
                       "AND query LIKE '%pg_sleep%' AND state = 'active'"))


def postmaster_pid(pg):
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def peak_rss_kb_until_result(r, daemon, job_id, timeout=60):
    """The daemon's largest RSS seen, sampled every 10 ms, until JOB_ID has
    its result (or TIMEOUT s)."""
    peak = 0
    deadline = time.monotonic() + timeout
    while not result(r, job_id) and time.monotonic() < deadline:
        peak = max(peak, rss_kb(daemon.proc.pid))
        time.sleep(0.01)
    return peak


def test_a_query_on_a_server_that_stops_answering_still_ends_at_its_timeout(r, pg, start_jobd):
    # The backend running the query stops answering (a hung server, or the
    # network between went silent): the cancel cannot stop it, nor can its
    # statement_timeout. The attempt used to hold its slot until the server
    # came back; now its connection is dropped 5 s after the cancel, the job
    # ends timed_out, and the query pipelined behind it gets its own outcome
    # (unavailable, retried elsewhere), never the stopped one's.
    start_jobd(**config_for(pg, 4, postgres__min_size=1, postgres__max_size=1))
    submit(r, {"id": "hung", "type": "sql", "query": "sleep", "params": [30],
               "timeout_ms": 500, "retry": {"attempts": 1}})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the query on the server")
    submit(r, {"id": "behind", "type": "sql", "query": "add", "params": [1, 2],
               "retry": {"attempts": 3, "delay_ms": 100}})
    pid = sleeping_backend(pg)
    os.kill(pid, signal.SIGSTOP)
    try:
        rec = wait_result(r, "hung", timeout=15)
        assert rec["status"] == "timed_out", rec
        rec = wait_result(r, "behind", timeout=15)
        assert rec["status"] == "succeeded" and rec["result"]["rows"] == [{"sum": 3}], rec
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_cancel_to_a_hung_server_neither_takes_a_job_thread_nor_holds_up_shutdown(r, pg,
                                                                                    start_jobd):
    # The whole server hangs (postmaster and backend): PQcancel has no
    # timeout and blocks. It ran on the jobs' one pool thread, so hash and
    # file jobs stopped, and exit waited for it. Cancels have threads of
    # their own now, and exit does not wait for a blocked one.
    daemon = start_jobd(threads__size=1, shutdown__drain_ms=1000,
                        **config_for(pg, postgres__min_size=1, postgres__max_size=1))
    submit(r, {"id": "hung", "type": "sql", "query": "sleep", "params": [30],
               "timeout_ms": 1000, "retry": {"attempts": 1}})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the query on the server")
    pids = [sleeping_backend(pg), postmaster_pid(pg)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2)       # the timeout passed and the cancel went out
        submit(r, {"id": "h", "type": "hash", "data": "x"})
        assert wait_result(r, "h", timeout=20)["status"] == "succeeded"
        assert wait_result(r, "hung", timeout=15)["status"] == "timed_out"
        assert daemon.stop(timeout=15) == 0
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_an_oversized_result_is_stopped_while_it_streams(r, pg, start_jobd):
    # A result over 100,000 rows or 16 MiB is too_large and read one row at
    # a time, so it is stopped before it is held whole. Single-row mode was
    # asked for too late and always refused: 2,000,000 rows of 100 bytes
    # took 374 MB before the job failed.
    if SANITIZERS:
        pytest.skip("RSS bounds do not hold under ASan")
    daemon = start_jobd(**config_for(pg))
    submit(r, {"id": "huge", "type": "sql", "query": "big", "params": [2000000],
               "timeout_ms": 60000})
    peak = peak_rss_kb_until_result(r, daemon, "huge")
    rec = wait_result(r, "huge")
    assert rec["error"]["code"] == "too_large", rec
    assert peak < 120000, peak


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_a_named_query_whose_prepare_failed_is_prepared_again(r, pg, start_jobd, depth):
    # Its table does not exist yet: the Prepare fails. A statement counted
    # as prepared then would fail every later job on that connection with
    # 26000 (prepared statement does not exist). One connection: the same.
    start_jobd(**config_for(pg, depth, postgres__max_size=1))
    pid = run(r, "pid", query="pid")["result"]["rows"][0]["pid"]
    rec = run(r, "early", query="later")
    assert rec["status"] == "failed" and rec["error"]["sqlstate"] == "42P01", rec
    pg.psql("CREATE TABLE later (x int)")
    rec = run(r, "late", query="later")
    assert rec["status"] == "succeeded", rec
    assert rec["result"]["rows"] == [{"pid": pid, "n": 0}]


def test_a_first_use_behind_a_failing_query_in_the_pipeline(r, pg, start_jobd):
    # A query that fails just before a named query's first use, in the same
    # packet on the same connection: each has its own Sync, so the failure
    # aborts only its own part of the pipeline and the Prepare still runs.
    pg.psql("CREATE TABLE later (x int)")
    start_jobd(**config_for(pg, 8, postgres__max_size=1))
    pid = run(r, "pid", query="pid")["result"]["rows"][0]["pid"]
    submit_round(r, ["f1"], query="fail")
    submit_round(r, ["l1"], query="later")
    recs = wait_results(r, ["f1", "l1"])
    assert recs["f1"]["error"]["sqlstate"] == "22012", recs
    assert recs["l1"]["status"] == "succeeded", recs
    rec = run(r, "l2", query="later")
    assert rec["result"]["rows"] == [{"pid": pid, "n": 0}], rec


def test_queries_pipelined_behind_a_failed_prepare_get_its_error(r, pg, start_jobd):
    # Three jobs of a named query that has never run, sent down one
    # connection in one packet: the first carries the Prepare, the others
    # only their Execute. The Prepare fails (no table): the others must fail
    # with that error, not with 26000 (prepared statement does not exist),
    # and once the table exists the query works on that connection.
    start_jobd(**config_for(pg, 8, postgres__max_size=1))
    pid = run(r, "pid", query="pid")["result"]["rows"][0]["pid"]
    submit_round(r, ["a1", "a2", "a3"], query="later")
    recs = wait_results(r, ["a1", "a2", "a3"])
    for rec in recs.values():
        assert rec["status"] == "failed" and rec["error"]["sqlstate"] == "42P01", recs
    pg.psql("CREATE TABLE later (x int)")
    submit_round(r, ["b1", "b2", "b3"], query="later")
    recs = wait_results(r, ["b1", "b2", "b3"])
    for rec in recs.values():
        assert rec["result"]["rows"] == [{"pid": pid, "n": 0}], recs



def test_a_query_sent_again_behind_a_second_failing_prepare_gets_its_error(r, pg, start_jobd):
    # One connection, in one packet behind a slow query: a1 with the Prepare
    # of a query whose table does not exist, a slow query, a2 with only its
    # Execute, another slow query. a1 fails; while the slow query after it
    # runs, a3 is sent with a Prepare of its own. a2 then meets no statement
    # (26000) and is sent again behind a3, counting on a3's Prepare (the
    # last slow query keeps a3's failure unread meanwhile); that Prepare
    # fails too, and a2 failed with 26000 a second time, its own error
    # (42P01) never seen.
    start_jobd(**config_for(pg, 8, postgres__max_size=1))
    run(r, "pid", query="pid")
    pipe = r.pipeline(transaction=False)
    for job_id, query, params in [("slow0", "nap", [1]), ("a1", "later", []),
                                  ("slow1", "nap", [1]), ("a2", "later", []),
                                  ("slow2", "nap", [0.5])]:
        pipe.xadd(f"{NS}:queue", {"job": json.dumps({"id": job_id, "type": "sql",
                                                     "query": query, "params": params})})
    pipe.execute()
    assert wait_result(r, "a1")["error"]["sqlstate"] == "42P01"
    assert not result(r, "slow1")
    submit_round(r, ["a3"], query="later")
    recs = wait_results(r, ["a2", "a3", "slow1", "slow2"])
    assert all(recs[i]["status"] == "succeeded" for i in ("slow1", "slow2")), recs
    for i in ("a2", "a3"):
        assert recs[i]["status"] == "failed" and recs[i]["error"]["sqlstate"] == "42P01", recs
    pg.psql("CREATE TABLE later (x int)")
    assert run(r, "b1", query="later")["status"] == "succeeded"

SESSION_QUERIES = dict(
    QUERIES,
    begin="BEGIN",
    lock="SELECT pg_advisory_lock($1::bigint) AS locked",
    set_path="SET search_path = nowhere",
    config_path="SELECT set_config('search_path', $1, false) AS path",
    listen="LISTEN ch",
    temp="CREATE TEMP TABLE scratch (x int)",
    state="SELECT pg_backend_pid() AS pid, current_setting('search_path') AS path, "
          "(SELECT count(*) FROM pg_listening_channels()) AS listening, "
          "pg_my_temp_schema() <> 0 AS temp, current_setting('statement_timeout') AS timeout, "
          "current_user AS role",
)


def session_config(pg, depth, **extra):
    return config_for(pg, depth, postgres__allow_raw_sql=True, postgres__min_size=1,
                      postgres__max_size=1, postgres__queries=SESSION_QUERIES, **extra)


def advisory_locks(pg):
    return int(pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


def fresh_session(rec):
    """The state a job's query must find, whatever the jobs before it did."""
    assert rec["status"] == "succeeded", rec
    row = rec["result"]["rows"][0]
    assert row["path"] == '"$user", public' and row["listening"] == 0, row
    assert row["temp"] is False and row["role"] == "postgres", row
    assert row["timeout"] != "0", row        # jobd's guard, set again after a RESET ALL
    return row["pid"]


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_a_transaction_a_named_query_opens_never_reaches_the_next_job(r, pg, start_jobd,
                                                                      depth):
    # A named BEGIN left its pooled connection idle in transaction: the next
    # jobs' inserts there reported success and never committed.
    start_jobd(**session_config(pg, depth))
    assert run(r, "begin", query="begin")["result"]["command"] == "BEGIN"
    assert run(r, "ins", query="insert", params=["kept"])["status"] == "succeeded"
    assert pg.psql("SELECT count(*) FROM items WHERE name = 'kept'") == "1"
    fresh_session(run(r, "after", query="state"))
    assert pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobd' "
                   "AND state LIKE 'idle in transaction%'") == "0"


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_advisory_locks_do_not_outlive_their_job(r, pg, start_jobd, depth):
    # A session advisory lock taken by a job was held by its pooled
    # connection for ever: another daemon's job taking it waited for ever.
    # It is released in the same packet, and the connection is kept.
    start_jobd(**session_config(pg, depth))
    pid = fresh_session(run(r, "s0", query="state"))
    assert run(r, "named", query="lock", params=[1])["status"] == "succeeded"
    assert advisory_locks(pg) == 0
    rec = run(r, "raw", sql="SELECT pg_try_advisory_lock(2) AS got")
    assert rec["result"]["rows"] == [{"got": True}], rec
    assert advisory_locks(pg) == 0
    # Pipelined: each job takes the same lock and leaves it free for the next.
    ids = [f"l{i}" for i in range(6)]
    submit_round(r, ids, query="lock", params=[3])
    assert all(rec["status"] == "succeeded" for rec in wait_results(r, ids).values())
    assert advisory_locks(pg) == 0
    assert pg.psql("SELECT pg_try_advisory_lock(3)") == "t"    # another session gets it
    assert fresh_session(run(r, "s1", query="state")) == pid


@pytest.mark.parametrize("depth", [1, 8], ids=["pipeline1", "pipeline8"])
def test_settings_listen_and_temp_tables_do_not_reach_the_next_job(r, pg, start_jobd, depth):
    # SET (named), set_config() (named and raw), LISTEN and temporary tables
    # (named and raw), a role, used to stay on the pooled connection for the
    # next jobs. set_config() is undone by a RESET ALL sent with it (the
    # connection is kept); after the others the connection is closed.
    pg.psql("CREATE ROLE other")
    start_jobd(**session_config(pg, depth))
    pid = fresh_session(run(r, "s0", query="state"))
    jobs = [("set_path", {"query": "set_path"}, False),
            ("config_path", {"query": "config_path", "params": ["nowhere"]}, True),
            ("raw_config", {"sql": "SELECT set_config('search_path', 'nowhere', false)"}, True),
            ("listen", {"query": "listen"}, False),
            ("temp", {"query": "temp"}, False),
            ("raw_temp", {"sql": "CREATE TEMP TABLE scratch (x int)"}, False),
            ("raw_role", {"sql": "SELECT set_config('role', 'other', false)"}, False)]
    for job_id, fields, kept in jobs:
        assert run(r, job_id, **fields)["status"] == "succeeded", job_id
        new_pid = fresh_session(run(r, f"after_{job_id}", query="state"))
        assert (new_pid == pid) == kept, job_id
        pid = new_pid
    # Plain statements, raw or named, keep their connection.
    assert run(r, "plain_raw", sql="SELECT 1")["status"] == "succeeded"
    assert run(r, "plain", query="insert", params=["x"])["status"] == "succeeded"
    assert fresh_session(run(r, "last", query="state")) == pid


# What undoes a session-changing query's state (send_reset()) failing or not
# coming back. The trap shadows pg_advisory_unlock_all() for a session whose
# search_path the job put it in front of pg_catalog: it raises, or sleeps
# (for the job's own statement_timeout to cancel it, or for the backend to be
# terminated meanwhile).
TRAP = {"error": "RAISE EXCEPTION 'trap: unlock refused';",
        "timeout": "PERFORM pg_catalog.pg_sleep(3);",
        "terminate": "PERFORM pg_catalog.pg_sleep(3);"}


@pytest.mark.parametrize("how", sorted(TRAP))
def test_a_reset_that_fails_keeps_the_jobs_answer_and_retires_its_connection(r, pg, start_jobd,
                                                                             how):
    pg.psql("CREATE SCHEMA trap; CREATE FUNCTION trap.pg_advisory_unlock_all() RETURNS void "
            f"LANGUAGE plpgsql AS $$BEGIN {TRAP[how]} END$$")
    daemon = start_jobd(**session_config(pg, 8))
    pid = fresh_session(run(r, "s0", query="state"))
    timeout = ", set_config('statement_timeout', '300', false)" if how == "timeout" else ""
    sql = (f"WITH s AS (SELECT set_config('search_path', 'trap, pg_catalog', false){timeout}) "
           "INSERT INTO public.items(name) SELECT 'once' FROM s RETURNING id")
    submit(r, {"id": "risky", "type": "sql", "sql": sql})
    # Queued behind it on the pool's one connection.
    submit(r, {"id": "behind", "type": "sql", "query": "insert", "params": ["behind"]})
    if how == "terminate":
        reset = ("FROM pg_stat_activity WHERE application_name = 'jobd' AND state = 'active' "
                 "AND query LIKE 'SELECT pg_advisory_unlock_all()%'")
        wait_for(lambda: pg.psql(f"SELECT count(*) {reset}") == "1", timeout=10,
                 what="the reset running")
        assert pg.psql(f"SELECT pg_terminate_backend(pid) {reset}") == "t"
    rec = wait_result(r, "risky", timeout=20)
    # The job's own statement ran and committed before the reset: its answer
    # stands, once, not retried as if the connection had failed under it.
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec
    assert rec["result"]["command"] == "INSERT 0 1", rec
    assert wait_result(r, "behind", timeout=20)["status"] == "succeeded"
    assert pg.psql("SELECT count(*) FROM items WHERE name = 'once'") == "1"
    assert pg.psql("SELECT count(*) FROM items WHERE name = 'behind'") == "1"
    # The connection that carried it is gone; the next jobs find a clean one.
    new_pid = fresh_session(run(r, "s1", query="state"))
    assert new_pid != pid
    assert fresh_session(run(r, "s2", query="state")) == new_pid
    assert int(pg.psql("SELECT count(*) FROM pg_stat_activity "
                       "WHERE application_name = 'jobd'")) == 1
    assert daemon.proc.poll() is None
