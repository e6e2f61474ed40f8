"""PROTOCOL §3 file jobs: confined to files.root by construction."""
import hashlib
import os

import pytest

from conftest import submit, wait_result


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
