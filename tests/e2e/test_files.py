"""PROTOCOL §3 file jobs: confined to files.root by construction."""
import hashlib
import os
import time

import pytest

from conftest import build_preload_shim, cancel, submit, wait_for, wait_result


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_text("hello\n")
    (root / "sub" / "bin.dat").write_bytes(bytes(range(256)))
    outside = tmp_path / "secret.txt"
    outside.write_text("secret\n")
    os.symlink(outside, root / "link-out")
    os.symlink(tmp_path, root / "sub" / "dir-out")
    os.symlink(root / "hello.txt", root / "link-in")
    return root


def run(r, job_id, **fields):
    submit(r, dict(fields, id=job_id, type="file"))
    return wait_result(r, job_id)


def test_read_stat_sha256(r, start_jobd, root):
    start_jobd(files__root=str(root))
    rec = run(r, "read", path="hello.txt")
    assert rec["result"] == {"path": "hello.txt", "size": 6, "content": "hello\n"}
    rec = run(r, "bin", path="sub/bin.dat")
    assert rec["result"]["size"] == 256 and "content_base64" in rec["result"]
    rec = run(r, "sum", path="sub/bin.dat", op="sha256")
    assert rec["result"]["sha256"] == hashlib.sha256(bytes(range(256))).hexdigest()
    rec = run(r, "stat", path="sub", op="stat")
    assert rec["result"]["type"] == "directory"


@pytest.mark.parametrize("path", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd",
                                  "link-out", "sub/dir-out/secret.txt", "link-in"])
def test_paths_leaving_the_root_are_forbidden(r, start_jobd, root, path):
    start_jobd(files__root=str(root))
    rec = run(r, "esc", path=path)
    assert rec["status"] == "failed"
    assert rec["error"]["code"] == "forbidden", rec


def test_missing_file_is_io_error(r, start_jobd, root):
    start_jobd(files__root=str(root))
    rec = run(r, "miss", path="nope.txt")
    assert rec["error"]["code"] == "io_error"


def test_too_large(r, start_jobd, root):
    start_jobd(files__root=str(root), files__max_bytes=100)
    rec = run(r, "big", path="sub/bin.dat")
    assert rec["error"]["code"] == "too_large"


def test_file_jobs_off_without_root(r, start_jobd):
    start_jobd()
    rec = run(r, "off", path="x")
    assert rec["status"] == "failed" and rec["error"]["code"] == "unavailable"


def slow_read_env(tmp_path, delay_ms):
    """Environment for a jobd with tests/e2e/slow_read_shim.c preloaded: a
    file whose name holds "slow" is read one 64 KiB chunk per read(), each
    after DELAY_MS, like a file on a slow network filesystem."""
    so = build_preload_shim(tmp_path, os.path.join(os.path.dirname(__file__),
                                                   "slow_read_shim.c"))
    return {"LD_PRELOAD": so, "SLOW_READ_MS": str(delay_ms)}


def test_a_read_stops_within_a_chunk_of_its_timeout_or_cancel(r, start_jobd, root, tmp_path):
    # 2 MiB at 64 KiB per 100 ms takes 3.2 s to read. The read looks at the
    # cancel flag between chunks (doc/threads.md): a timeout, or a cancel,
    # ends the job about one chunk later, not once the whole file is read
    # and encoded (a read of 1 GiB used to outlive a 20 ms timeout by 18 s).
    (root / "slow.bin").write_bytes(b"x" * (2 << 20))
    daemon = start_jobd(files__root=str(root), threads__size=1,
                        env=slow_read_env(tmp_path, 100))
    t0 = time.monotonic()
    rec = run(r, "short", path="slow.bin", timeout_ms=200)
    assert rec["status"] == "timed_out", rec
    # The next job waits for the one pool thread: it runs only once the
    # read above has really stopped.
    rec = run(r, "next", path="hello.txt")
    assert rec["status"] == "succeeded", rec
    assert time.monotonic() - t0 < 1.5, daemon.log_text()

    t0 = time.monotonic()
    submit(r, {"id": "stopped", "type": "file", "path": "slow.bin"})
    wait_for(lambda: "job stopped: attempt 1" in daemon.log_text(), what="the read to start")
    time.sleep(0.2)
    cancel(r, "stopped")
    assert wait_result(r, "stopped")["status"] == "cancelled"
    assert run(r, "after", path="hello.txt")["status"] == "succeeded"
    assert time.monotonic() - t0 < 1.5, daemon.log_text()
