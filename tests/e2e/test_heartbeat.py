"""The worker key and the worker name (worker.name)."""
import json
import signal

from conftest import NS, submit, wait_for, wait_result


def test_worker_name_names_consumer_worker_key_and_records(r, start_jobd):
    name = "blue-1.example:a_1"
    daemon = start_jobd(worker__name=name)
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
