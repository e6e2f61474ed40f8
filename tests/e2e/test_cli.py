"""The command line: --version, -t."""
import subprocess

from conftest import JOBD_BIN, REPO


def run(*args):
    return subprocess.run([JOBD_BIN, *args], capture_output=True, text=True, timeout=10)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("jobd ")


def test_check_good_config():
    out = run("-c", f"{REPO}/etc/jobd.conf", "-t")
    assert out.returncode == 0 and "valid" in out.stdout


def test_check_bad_config(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("redis = { port = 6379; };\nlimits = { max_inflight = \"lots\"; };\n")
    out = run("-c", str(conf), "-t")
    assert out.returncode == 1
    assert f"{conf}:2: limits.max_inflight: expected an integer, got a string" in out.stderr


def test_missing_file_and_usage(tmp_path):
    out = run("-c", str(tmp_path / "none.conf"), "-t")
    assert out.returncode == 1 and "cannot read" in out.stderr
    assert run().returncode == 1


def test_check_refuses_a_listen_port_getaddrinfo_would_refuse(tmp_path):
    # -t (and a reload) once called "127.0.0.1:80x" valid; jobd then could
    # not listen on it at the next start.
    for bad in ["127.0.0.1:9187x", "127.0.0.1: 9187", "127.0.0.1:+9187"]:
        conf = tmp_path / "listen.conf"
        conf.write_text(f'redis = {{ port = 6379; }};\nadmin = {{ listen = "{bad}"; }};\n')
        out = run("-c", str(conf), "-t")
        assert out.returncode == 1 and "admin.listen" in out.stderr, (bad, out.stderr)


def test_check_refuses_a_worker_name_that_would_break_key_names(tmp_path):
    conf = tmp_path / "name.conf"
    for bad in ["a b", "w*", "w?", "w[1]", "{w}", "w\\n", 'w\\"x', "w\\x1b[31m", "é",
                "w" * 101]:
        conf.write_text(f'redis = {{ port = 6379; }};\nworker = {{ name = "{bad}"; }};\n')
        out = run("-c", str(conf), "-t")
        assert out.returncode == 1 and f"{conf}:2: worker.name: must be" in out.stderr, \
            (bad, out.stderr)
        assert "\x1b" not in out.stderr and out.stderr.count("\n") == 2, (bad, out.stderr)
    for good in ["", "web-1.example.org:7", "w" * 100]:
        conf.write_text(f'worker = {{ name = "{good}"; }};\n')
        out = run("-c", str(conf), "-t")
        assert out.returncode == 0, (good, out.stderr)
