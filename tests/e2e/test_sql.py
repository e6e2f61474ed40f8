"""PROTOCOL §3 sql jobs against a real PostgreSQL the test starts itself."""
import json
import time

import pytest

from conftest import NS, stats, submit, wait_for, wait_result, wait_results
from pg_server import PgServer

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
}


@pytest.fixture
def pg(tmp_path):
    server = PgServer(tmp_path)
    server.psql("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
    yield server
    server.remove()


def config_for(pg, **extra):
    settings = {"postgres__conninfo": pg.conninfo(), "postgres__min_size": 1,
                "postgres__max_size": 4, "postgres__queries": QUERIES}
    settings.update(extra)
    return settings


def run(r, job_id, **fields):
    submit(r, dict(fields, id=job_id, type="sql"))
    return wait_result(r, job_id, timeout=20)


def test_type_mapping_and_nulls(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    rec = run(r, "types", query="types")
    assert rec["status"] == "succeeded", rec
    row = rec["result"]["rows"][0]
    assert row == {"i2": 1, "i4": 2, "i8": 9007199254740993, "f4": 1.5, "f8": 2.25, "b": True,
                   "j": {"a": [1]}, "jb": {"k": None}, "n": "12.50", "t": "txt", "nul": None,
                   "d": "2026-01-02", "nan": "NaN"}
    assert rec["result"]["row_count"] == 1 and rec["result"]["command"] == "SELECT 1"


def test_params_are_parameters_not_text(r, pg, start_jobd):
    start_jobd(**config_for(pg))
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


def test_sql_error_carries_sqlstate_and_is_not_retried(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    rec = run(r, "div", query="fail", retry={"attempts": 3})
    assert rec["status"] == "failed" and rec["attempts"] == 1
    assert rec["error"]["code"] == "sql_error" and rec["error"]["sqlstate"] == "22012"


def backends_running_sleep(pg):
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobd' "
                       "AND query LIKE '%pg_sleep%' AND state = 'active'"))


def test_timeout_cancels_on_the_server(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    submit(r, {"id": "slow", "type": "sql", "query": "sleep", "params": [30],
               "timeout_ms": 500})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the query on the server")
    rec = wait_result(r, "slow")
    assert rec["status"] == "timed_out"
    wait_for(lambda: backends_running_sleep(pg) == 0, timeout=3, what="the backend to stop")
    # The connection went back to the pool and works.
    assert run(r, "after", query="add", params=[1, 1])["result"]["rows"] == [{"sum": 2}]


def test_cancel_message_cancels_on_the_server(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    submit(r, {"id": "c", "type": "sql", "query": "sleep", "params": [30]})
    wait_for(lambda: backends_running_sleep(pg) == 1, what="the query on the server")
    r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": "c"}))
    assert wait_result(r, "c")["status"] == "cancelled"
    wait_for(lambda: backends_running_sleep(pg) == 0, timeout=3, what="the backend to stop")


def test_result_size_cap(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    rec = run(r, "big", query="big", params=[200000], timeout_ms=20000)
    assert rec["status"] == "failed" and rec["error"]["code"] == "too_large"


def test_pool_grows_to_max_and_queues(r, pg, start_jobd):
    start_jobd(**config_for(pg))
    ids = [f"p{i}" for i in range(8)]
    for i in ids:
        submit(r, {"id": i, "type": "sql", "query": "sleep", "params": [3.5]})
    wait_for(lambda: backends_running_sleep(pg) == 4, what="4 busy connections (max_size)")
    time.sleep(0.1)
    assert backends_running_sleep(pg) == 4
    # The pool's state is in the worker heartbeat (refreshed every 3 s).
    def pool_state():
        snap = json.loads(r.get(r.keys(f"{NS}:worker:*")[0]))
        return snap["postgres"]["busy"] == 4 and snap["postgres"]["waiting"] == 4
    wait_for(pool_state, timeout=3.2, what="busy 4, waiting 4 in the heartbeat")
    recs = wait_results(r, ids)
    assert all(rec["status"] == "succeeded" for rec in recs.values())
    starts = sorted(rec["started_at"] for rec in recs.values())
    ends = sorted(rec["finished_at"] for rec in recs.values())
    assert ends[-1] - starts[0] >= 7000     # two waves of four


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


def test_server_restart_under_load_loses_nothing(r, pg, start_jobd):
    start_jobd(**config_for(pg))
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


def test_sql_off_without_conninfo(r, start_jobd):
    start_jobd()
    rec = run(r, "off", query="x")
    assert rec["status"] == "failed" and rec["error"]["code"] == "unavailable"
    assert stats(r)["sql.failed"] == 1
