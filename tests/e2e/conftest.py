"""Harness for jobd's end-to-end tests.

Every test gets its own redis-server on a free loopback port in a temp dir and
runs the real jobd binary against it, submitting jobs exactly as a producer
would. Servers and daemons are stopped in teardown even when the test fails;
nothing touches the machine's own services.
"""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
JOBD_BIN = os.environ.get("JOBD_BIN", os.path.join(REPO, "src", "jobd"))
NS = "jobd"
# Set by scripts/test-sanitizers: the binaries are built with ASan/UBSan, and
# every sanitizer report is written into JOBD_SANITIZER_LOGS.
SANITIZERS = os.environ.get("JOBD_SANITIZERS") == "1"
SANITIZER_LOGS = os.environ.get("JOBD_SANITIZER_LOGS")


def build_preload_shim(tmp_path, src):
    """SRC (a .c file) built as an LD_PRELOAD library in TMP_PATH; its path.
    The test is skipped under sanitizers (ASan insists on being first in
    LD_PRELOAD) or when it cannot be built."""
    if SANITIZERS:
        pytest.skip("ASan insists on being first in LD_PRELOAD")
    so = tmp_path / (os.path.splitext(os.path.basename(str(src)))[0] + ".so")
    try:
        subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O1", "-o", str(so),
                        str(src), "-ldl"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot build {src}: {e}")
    return str(so)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    def __init__(self, tmp_path, appendonly=False):
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir(exist_ok=True)
        self.appendonly = appendonly
        self.proc = None
        self.start()
        self.client = redis.Redis(port=self.port, decode_responses=True)

    def start(self, extra=(), wait=True):
        """EXTRA: more redis-server arguments; WAIT: until it answers PING."""
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait:
            return
        probe = redis.Redis(port=self.port)
        def up():
            try:
                return probe.ping()
            except redis.exceptions.ConnectionError:
                return False
        wait_for(up, what="redis-server to answer PING")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self):
        self.kill()
        self.start()


class Jobd:
    def __init__(self, tmp_path, redis_port, name="jobd", **overrides):
        self.tmp = tmp_path
        self.redis_port = redis_port
        self.conf = tmp_path / f"{name}.conf"
        self.log = tmp_path / f"{name}.log"
        self.settings = default_settings(redis_port)
        for key, value in overrides.items():
            group, _, field = key.partition("__")
            self.settings.setdefault(group, {})[field] = value
        self.write_config()
        self.proc = None

    def write_config(self, text=None):
        self.conf.write_text(text if text is not None else render(self.settings))

    def start(self, wait=True, env=None):
        """ENV: variables added to this environment for jobd (NOTIFY_SOCKET...)."""
        self.logf = open(self.log, "ab")
        # Not JOURNAL_STREAM (set when the suite runs under a systemd unit):
        # jobd would then log "<N>" prefixes instead of the timestamps and
        # levels the tests read (log_times, forged-line checks).
        base = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        self.proc = subprocess.Popen([JOBD_BIN, "-c", str(self.conf)],
                                     stdout=self.logf, stderr=self.logf,
                                     env={**base, **(env or {})})
        if wait:
            self.wait_ready()
        return self

    def worker_name(self):
        """worker.name when the config sets one, else jobd's "host:pid"."""
        return (self.settings.get("worker", {}).get("name")
                or f"{socket.gethostname()}:{self.proc.pid}")

    def worker_key(self):
        return f"{NS}:worker:{self.worker_name()}"

    def wait_ready(self, timeout=10):
        client = redis.Redis(port=self.redis_port)
        def ready():
            assert self.proc.poll() is None, f"jobd exited: {self.log_text()}"
            try:
                return client.exists(self.worker_key())
            except redis.exceptions.ConnectionError:
                return False
        wait_for(ready, timeout, what="jobd's worker key (ready)")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"jobd did not exit within {timeout}s of SIGTERM")

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def default_settings(redis_port):
    return {
        "redis": {"host": "127.0.0.1", "port": redis_port, "namespace": NS},
        "intake": {"channels": [f"{NS}:jobs"], "streams": [f"{NS}:queue"]},
        "jobs": {"retry": {"attempts": 1, "delay_ms": 50, "backoff": 2.0,
                           "max_delay_ms": 1000, "jitter": False}},
        "threads": {"size": 2},
        "admin": {"listen": ""},
        "shutdown": {"drain_ms": 5000},
        "log": {"level": "debug"},
    }


def render_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}L" if abs(value) > 2**31 - 1 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[ " + ", ".join(render_value(v) for v in value) + " ]"
    if isinstance(value, dict):
        return "{ " + " ".join(f"{k} = {render_value(v)};" for k, v in value.items()) + " }"
    raise TypeError(value)


def render(settings):
    return "".join(f"{group} = {render_value(fields)};\n" for group, fields in settings.items())


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def r(redis_server):
    return redis_server.client


@pytest.fixture
def start_jobd(tmp_path, redis_server, request):
    """Factory: start_jobd(**overrides) -> running Jobd. Overrides are
    group__field=value, e.g. limits__max_inflight=2."""
    started = []

    def start(name="jobd", wait=True, env=None, **overrides):
        daemon = Jobd(tmp_path, redis_server.port, name=name, **overrides)
        started.append(daemon)
        return daemon.start(wait=wait, env=env)

    yield start
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for daemon in started:
        if daemon.proc and daemon.proc.poll() is None:
            try:
                daemon.stop()
            except AssertionError:
                pass
        if failed:
            print(f"---- {daemon.log} (tail) ----")
            print("\n".join(daemon.log_text().splitlines()[-60:]))


@pytest.fixture(autouse=True)
def no_sanitizer_report():
    """Under sanitizers, a report written while a test ran (an error, or a
    leak found when a daemon exited) fails that test, even when the test
    itself did not look at how the daemon ended. Autouse fixtures are set up
    first, so this check runs after every daemon of the test was stopped."""
    if not SANITIZER_LOGS:
        yield
        return
    before = set(os.listdir(SANITIZER_LOGS))
    yield
    new = sorted(set(os.listdir(SANITIZER_LOGS)) - before)
    if new:
        texts = []
        for name in new:
            with open(os.path.join(SANITIZER_LOGS, name), errors="replace") as f:
                texts.append(f"==== {name}\n" + "".join(f.readlines()[:80]))
        pytest.fail("sanitizer report(s) during this test:\n" + "\n".join(texts), pytrace=False)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---- producer helpers ------------------------------------------------------

def submit(r, envelope, stream=f"{NS}:queue"):
    text = envelope if isinstance(envelope, str) else json.dumps(envelope)
    return r.xadd(stream, {"job": text})


def publish(r, envelope, channel=f"{NS}:jobs"):
    text = envelope if isinstance(envelope, str) else json.dumps(envelope)
    return r.publish(channel, text)


def cancel(r, job_id):
    """PROTOCOL §5's cancel, published on NS:control."""
    return r.publish(f"{NS}:control", json.dumps({"cmd": "cancel", "id": job_id}))


def result(r, job_id):
    text = r.get(f"{NS}:result:{job_id}")
    return json.loads(text) if text else None


def wait_result(r, job_id, timeout=10):
    return wait_for(lambda: result(r, job_id), timeout, what=f"the result of {job_id}")


def wait_results(r, ids, timeout=20):
    def all_done():
        missing = [i for i in ids if not r.exists(f"{NS}:result:{i}")]
        return not missing
    wait_for(all_done, timeout, what=f"{len(ids)} results")
    return {i: result(r, i) for i in ids}


def dead_entries(r):
    return [fields for _, fields in r.xrange(f"{NS}:dead")]


def cpu_seconds(pid):
    """User plus system CPU time of process PID so far, all threads."""
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def stats(r):
    return {k: int(v) for k, v in r.hgetall(f"{NS}:stats").items()}


class Ledger:
    """Every final record published on NS:events, per id, from the start."""

    def __init__(self, r):
        self.pubsub = r.pubsub()
        self.pubsub.subscribe(f"{NS}:events")
        self.records = {}
        self.running = True
        self.thread = threading.Thread(target=self.listen, daemon=True)
        self.thread.start()

    def listen(self):
        while self.running:
            msg = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg and msg["type"] == "message":
                rec = json.loads(msg["data"])
                self.records.setdefault(rec["id"], []).append(rec)

    def report(self, ids):
        time.sleep(0.3)
        self.running = False
        self.thread.join()
        lost = [i for i in ids if i not in self.records]
        duplicated = {i: len(v) for i, v in self.records.items() if len(v) > 1}
        print(f"jobs: {len(ids)}, lost: {len(lost)}, duplicated: {len(duplicated)}")
        return lost, duplicated
