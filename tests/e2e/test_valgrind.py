"""No leaks and no memory errors: a run that handles every kind of job and
exits cleanly, under valgrind memcheck."""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import JOBD_BIN, SANITIZERS, Jobd, publish, submit, wait_for, wait_results


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
@pytest.mark.skipif(SANITIZERS, reason="an ASan build cannot run under valgrind (both take over "
                    "malloc); the sanitizer run checks for leaks and memory errors itself")
def test_memcheck_clean_run(tmp_path, redis_server, r):
    root = tmp_path / "files"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    daemon = Jobd(tmp_path, redis_server.port, files__root=str(root))
    vg_log = tmp_path / "valgrind.log"
    logf = open(daemon.log, "ab")
    daemon.proc = subprocess.Popen(
        ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
         "--error-exitcode=99", f"--log-file={vg_log}", JOBD_BIN, "-c", str(daemon.conf)],
        stdout=logf, stderr=logf)
    try:
        daemon.wait_ready(timeout=60)
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
        assert daemon.proc.wait(60) == 0, vg_log.read_text()[-3000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    report = vg_log.read_text()
    assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]
    assert "definitely lost: 0 bytes" in report or "All heap blocks were freed" in report
