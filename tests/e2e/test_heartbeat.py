"""The worker key and the worker name: worker.name, and two live daemons
under one name noticed through the heartbeat's instance token."""
import json
import signal
import time

from conftest import NS, free_port, submit, wait_for, wait_result
from test_admin import get, parse_metrics
from test_jobctl import ctl

COLLISION = "is also used by another running jobd"
HEARTBEAT_S = 3     # heartbeat.c's EVERY_MS


def collisions_metric(port):
    return parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])[
        "jobd_worker_name_collisions_total"]


def test_two_live_daemons_with_one_name_each_report_it(r, start_jobd):
    ports = [free_port(), free_port()]
    a = start_jobd(name="a", worker__name="shared", admin__listen=f"127.0.0.1:{ports[0]}")
    b = start_jobd(name="b", worker__name="shared", admin__listen=f"127.0.0.1:{ports[1]}")
    for daemon in (a, b):
        wait_for(lambda: COLLISION in daemon.log_text(), timeout=6 * HEARTBEAT_S,
                 what=f"{daemon.log.name} to report the shared name")
        line = next(l for l in daemon.log_text().splitlines() if COLLISION in l)
        assert " ERROR " in line and "worker name shared" in line and "worker.name" in line, line
    # Counted at every heartbeat that finds the other's snapshot, logged once a minute.
    first = [collisions_metric(p) for p in ports]
    assert min(first) >= 1, first
    wait_for(lambda: all(collisions_metric(p) > n for p, n in zip(ports, first)),
             timeout=4 * HEARTBEAT_S, what="more collisions counted")
    for daemon in (a, b):
        assert daemon.log_text().count(COLLISION) == 1, daemon.log_text()
    # jobctl workers shows one line for the two: that line says so.
    w = ctl(a, "workers")
    assert w.returncode == 0 and w.stdout.startswith("shared inflight=0") and \
        "name_collisions=" in w.stdout and "set worker.name" in w.stdout, w.stdout


def test_a_restart_under_the_same_name_is_not_a_collision(r, start_jobd):
    port = free_port()
    old = start_jobd(worker__name="solo", admin__listen=f"127.0.0.1:{port}")
    old_snapshot = json.loads(r.get(old.worker_key()))
    old.kill9()
    assert r.exists(old.worker_key())      # lingers up to its TTL
    new = start_jobd(name="again", worker__name="solo", admin__listen=f"127.0.0.1:{port}")
    wait_for(lambda: json.loads(r.get(new.worker_key()))["pid"] == new.proc.pid,
             what="the new daemon's snapshot")
    assert json.loads(r.get(new.worker_key()))["instance"] != old_snapshot["instance"]
    time.sleep(2.5 * HEARTBEAT_S)       # two heartbeats of the new daemon
    assert COLLISION not in new.log_text() + old.log_text()
    assert collisions_metric(port) == 0


def test_worker_name_names_consumer_worker_key_and_records(r, start_jobd):
    name = "blue-1.example:a_1"
    # Not a string (someone else's): SET ... GET would refuse it; it is replaced.
    r.hset(f"{NS}:worker:{name}", "x", "1")
    daemon = start_jobd(wait=False, worker__name=name)
    wait_for(lambda: r.type(f"{NS}:worker:{name}") == "string", what="the snapshot")
    submit(r, {"id": "named", "type": "sleep", "ms": 1})
    assert wait_result(r, "named")["worker"] == name
    assert [c["name"] for c in r.xinfo_consumers(f"{NS}:queue", "jobd")] == [name]
    assert r.keys(f"{NS}:worker:*") == [f"{NS}:worker:{name}"]
    assert json.loads(r.get(f"{NS}:worker:{name}"))["worker"] == name
    markers = r.keys(f"{NS}:txn:*")
    assert markers and all(m.startswith(f"{NS}:txn:{name}:") for m in markers), markers
    # Only a restart changes it: the consumer owns the daemon's pending entries.
    daemon.settings["worker"]["name"] = "other"
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
    assert "worker.name" in daemon.log_text()
    submit(r, {"id": "still", "type": "sleep", "ms": 1})
    assert wait_result(r, "still")["worker"] == name
    assert not r.exists(f"{NS}:worker:other")
