"""The systemd notify protocol as systemd sees it: jobd runs with
NOTIFY_SOCKET (and WATCHDOG_USEC) pointing at a datagram socket of the test's
own, and every message it sends there is checked - READY=1 only once it takes
jobs, WATCHDOG=1 pings, RELOADING=1 then READY=1 around a reload, STOPPING=1
on SIGTERM, and nothing that would tell systemd a lie before it is ready."""
import os
import signal
import socket
import time

import pytest

from conftest import submit, wait_for, wait_result


class NotifySocket:
    """What systemd would read: one datagram per sd_notify() call."""

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received = []      # (time.monotonic(), [lines]) per datagram

    def read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.received
            self.received.append((time.monotonic(), data.decode().split("\n")))

    def lines(self):
        return [line for _, lines in self.read() for line in lines if line]

    def times_of(self, line):
        return [t for t, lines in self.read() if line in lines]

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path)
    yield n
    n.close()


def test_ready_watchdog_reload_and_stopping_reach_systemd(r, start_jobd, notify):
    daemon = start_jobd(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
    wait_for(lambda: "READY=1" in notify.lines(), what="READY=1")
    assert notify.lines().count("READY=1") == 1, notify.lines()
    submit(r, {"id": "a", "type": "sleep", "ms": 1})
    assert wait_result(r, "a")["status"] == "succeeded"

    # WATCHDOG_USEC=400 ms: a ping every 200 ms (half of it, as systemd asks).
    # Datagrams are stamped when read: read what came before first, or pings
    # sent while "a" ran would be stamped after START and counted.
    notify.read()
    start = time.monotonic()
    time.sleep(1.3)
    pings = [t for t in notify.times_of("WATCHDOG=1") if t >= start]
    assert 3 <= len(pings) <= 9, pings     # 6-7 on time; a loaded machine is late

    # SIGHUP: RELOADING=1 with the monotonic time of the reload, then READY=1.
    before = len(notify.lines())
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "READY=1" in notify.lines()[before:], what="READY=1 after the reload")
    after = [line for line in notify.lines()[before:] if not line.startswith("WATCHDOG")]
    assert after[0] == "RELOADING=1" and after[1].startswith("MONOTONIC_USEC="), after
    usec = int(after[1].split("=")[1])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5, usec
    assert after[2] == "READY=1", after

    # SIGTERM: STOPPING=1 first, and nothing claims readiness after it.
    before = len(notify.lines())
    assert daemon.stop() == 0
    after = [line for line in notify.lines()[before:] if not line.startswith("WATCHDOG")]
    assert after == ["STOPPING=1"], after


def test_no_ready_until_redis_answers_not_even_after_a_reload(redis_server, start_jobd, notify):
    # Redis is down when jobd starts: systemd must go on waiting. A SIGHUP in
    # that time must not say READY=1 either (it once did, after RELOADING=1).
    redis_server.kill()
    daemon = start_jobd(wait=False, env={"NOTIFY_SOCKET": notify.path})
    # Its signal handlers are in place once it says it is starting (a SIGHUP
    # before that would kill it); then a while with Redis down.
    wait_for(lambda: " starting: " in daemon.log_text(), what="jobd starting")
    time.sleep(1)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reload: configuration" in daemon.log_text(), what="the reload")
    time.sleep(0.3)
    assert notify.lines() == [], notify.lines()
    redis_server.start()
    wait_for(lambda: "READY=1" in notify.lines(), timeout=15, what="READY=1 once Redis answers")
    assert notify.lines() == ["READY=1"], notify.lines()
    # A SIGHUP during the drain does not say READY=1 after STOPPING=1.
    submit(redis_server.client, {"id": "long", "type": "sleep", "ms": 1500})
    wait_for(lambda: "job long: attempt 1" in daemon.log_text(), what="long to start")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: "STOPPING=1" in notify.lines(), what="STOPPING=1")
    daemon.signal(signal.SIGHUP)
    assert daemon.proc.wait(20) == 0
    assert notify.lines() == ["READY=1", "STOPPING=1"], notify.lines()


def cpu_seconds(pid):
    """utime + stime of PID, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_watchdog_under_2_ms_pings_every_millisecond(r, start_jobd, notify):
    # WatchdogSec=1ms: half of it is 0 ms in whole milliseconds. libevent
    # re-arms a persistent timer only when its timeout is set, so a 0 ms one
    # fired once and never again: no pings, and systemd would kill jobd. The
    # period is clamped to 1 ms; and the CPU check keeps it from spinning.
    daemon = start_jobd(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000"})
    wait_for(lambda: "READY=1" in notify.lines(), what="READY=1")
    notify.read()
    start, cpu_start = time.monotonic(), cpu_seconds(daemon.proc.pid)
    while time.monotonic() < start + 1.0:
        notify.read()           # the socket queues only ~10 datagrams (max_dgram_qlen)
        time.sleep(0.001)
    pings = [t for t in notify.times_of("WATCHDOG=1") if t >= start]
    cpu = cpu_seconds(daemon.proc.pid) - cpu_start
    assert 100 <= len(pings) <= 1100, len(pings)  # ~1,000 on time; late on a loaded machine
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 1 s"
    submit(r, {"id": "w", "type": "sleep", "ms": 1})
    assert wait_result(r, "w")["status"] == "succeeded"
