"""SIGHUP reload: a bad file keeps the running configuration."""
import signal

from conftest import submit, wait_for, wait_result


def test_sighup_with_bad_file_keeps_running(r, start_jobd):
    daemon = start_jobd()
    good = daemon.conf.read_text()
    daemon.write_config(good + "limits = { max_inflight = 0; };\nbogus = 1;\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running configuration" in daemon.log_text(), what="the error")
    log = daemon.log_text()
    assert "limits.max_inflight: must be 1..1000000, got 0" in log
    assert "bogus: unknown setting" in log
    submit(r, {"id": "still", "type": "sleep", "ms": 1})
    assert wait_result(r, "still")["status"] == "succeeded"
    assert daemon.proc.poll() is None


def test_sighup_applies_reloadable_settings(r, start_jobd):
    daemon = start_jobd(jobs__timeout_ms=30000)
    daemon.settings["jobs"]["timeout_ms"] = 100
    daemon.settings["redis"]["port"] = 1      # needs a restart: kept, and said so
    daemon.settings.setdefault("http", {})["max_connections"] = 7     # so does this
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "configuration" in daemon.log_text() and "applied" in daemon.log_text(),
             what="the reload")
    assert "redis.port" in daemon.log_text() and "http.max_connections" in daemon.log_text()
    submit(r, {"id": "short", "type": "sleep", "ms": 1000})
    rec = wait_result(r, "short")
    assert rec["status"] == "timed_out"     # the new default timeout applies
