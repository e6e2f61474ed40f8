"""The server's version, checked on every connection (HELLO): a Redis older
than 6.2 would lose the reclaim and the shared cancels without a word, so it
is refused like a wrong password, and the jobs wait in it.

The server here is Debian's Redis 7; an older one is played by a proxy that
rewrites the version HELLO reports, or hides HELLO from the server (a Redis
before 6.0 does not know it)."""
import re
import time

import pytest

from conftest import NS, submit, wait_for, wait_result
from redis_proxy import ForwardingProxy


class OldRedis(ForwardingProxy):
    """Reports VERSION in HELLO's reply; "unknown-hello" sends HELLO on under
    a name the server does not know, "refuse-hello" asks it for a protocol it
    does not have; bytes are raw RESP given instead of HELLO's whole reply;
    None passes everything unchanged."""

    HELLO_REPLY = re.compile(rb"\*14\r\n\$6\r\nserver\r\n.*?\$7\r\nmodules\r\n\*0\r\n", re.S)

    def __init__(self, redis_port, version):
        self.version = version
        super().__init__(redis_port)

    def forward(self, data, src, dst, state, upstream):
        version = self.version
        if upstream and version == "unknown-hello":
            data = data.replace(b"$5\r\nHELLO\r\n", b"$5\r\nHELLX\r\n")
        elif upstream and version == "refuse-hello":
            data = data.replace(b"$5\r\nHELLO\r\n$1\r\n2\r\n", b"$5\r\nHELLO\r\n$1\r\n9\r\n")
        elif not upstream and isinstance(version, bytes):
            data = self.HELLO_REPLY.sub(lambda m: version, data)
        elif not upstream and version not in (None, "unknown-hello", "refuse-hello"):
            v = version.encode()
            data = re.sub(rb"\$7\r\nversion\r\n\$\d+\r\n[^\r]*\r\n",
                          b"$7\\r\\nversion\\r\\n$%d\\r\\n%s\\r\\n" % (len(v), v), data)
        dst.sendall(data)
        return True


@pytest.mark.parametrize("version, says", [
    ("6.0.16", "the server is Redis 6.0.16"),
    ("6.1.99", "the server is Redis 6.1.99"),
    ("5.0.7", "the server is Redis 5.0.7"),
    ("unknown-hello", "older than Redis 6.0"),
])
def test_a_server_older_than_6_2_is_refused_and_its_jobs_wait(r, redis_server, start_jobd,
                                                               version, says):
    proxy = OldRedis(redis_server.port, version)
    try:
        submit(r, {"id": "waits", "type": "sleep", "ms": 1})
        daemon = start_jobd(wait=False, redis__port=proxy.port)
        wait_for(lambda: says in daemon.log_text(), what="the refusal")
        assert "jobd needs Redis 6.2 or later" in daemon.log_text()
        time.sleep(1.5)
        assert daemon.proc.poll() is None
        assert r.get(f"{NS}:result:waits") is None
        assert r.xinfo_groups(f"{NS}:queue") == []      # nothing was read
        assert not r.exists(daemon.worker_key())
        assert "connection ready" not in daemon.log_text()
        # Slow retries (2.5-5 s, as after a wrong password): one refusal for
        # each of the three connections so far, not a reconnect storm.
        assert daemon.log_text().count(says) <= 3, daemon.log_text()
        # The server upgraded: the daemon comes up and the job that waited runs.
        proxy.version = None
        assert wait_result(r, "waits", timeout=15)["status"] == "succeeded"
        assert "connection ready (server " in daemon.log_text()
    finally:
        proxy.close()


@pytest.mark.parametrize("version", ["6.2.0", "7.0.15", "10.0.0"])
def test_a_server_of_6_2_or_later_is_used(r, redis_server, start_jobd, version):
    # 10.0.0 is the one a comparison of strings would refuse.
    proxy = OldRedis(redis_server.port, version)
    try:
        daemon = start_jobd(redis__port=proxy.port)
        submit(r, {"id": "runs", "type": "sleep", "ms": 1})
        assert wait_result(r, "runs")["status"] == "succeeded"
        assert f"redis command connection ready (server {version})" in daemon.log_text()
        assert "needs Redis" not in daemon.log_text()
    finally:
        proxy.close()


@pytest.mark.parametrize("version, says", [
    # HELLO refused for another reason than not knowing it (here the server's
    # own NOPROTO, for a protocol version it does not have; Redis 7's ACLs
    # cannot deny HELLO).
    ("refuse-hello", "NOPROTO"),
    # Not an array: no version in it.
    (b"+OK\r\n", "HELLO did not say"),
    (b":7\r\n", "HELLO did not say"),
    (b"$-1\r\n", "HELLO did not say"),
    (b"*-1\r\n", "HELLO did not say"),
    (b"*0\r\n", "HELLO did not say"),
    # An array without "version", or with one that is not a string.
    (b"*2\r\n$6\r\nserver\r\n$5\r\nredis\r\n", "HELLO did not say"),
    (b"*2\r\n$7\r\nversion\r\n:7\r\n", "HELLO did not say"),
    ("", "HELLO did not say"),
    # A version that is not MAJOR.MINOR cannot be compared: unknown too. ("-1.0"
    # was refused as older than 6.2, "abc" and "7" were used without a word.)
    ("abc", 'HELLO said version "abc"'),
    ("7", 'HELLO said version "7"'),
    ("-1.0", 'HELLO said version "-1.0"'),
    ("99999999999.0", 'HELLO said version "99999999999.0"'),
    ("7.x", 'HELLO said version "7.x"'),
], ids=["refused", "status", "integer", "nil", "nil-array", "empty-array", "no-version",
        "integer-version", "empty-version", "abc", "7", "-1.0", "overflow", "7.x"])
def test_an_odd_answer_to_hello_leaves_the_version_unknown(r, redis_server, start_jobd,
                                                           version, says):
    # The version is unknown, which is no proof of an old server and no
    # reason to stop: the daemon runs, with one warning for all its
    # connections, not one per connection.
    proxy = OldRedis(redis_server.port, version)
    try:
        daemon = start_jobd(redis__port=proxy.port)
        submit(r, {"id": "odd-hello", "type": "sleep", "ms": 1})
        assert wait_result(r, "odd-hello")["status"] == "succeeded"
        log = daemon.log_text()
        assert log.count("could not learn the server's version") == 1, log
        assert f"could not learn the server's version ({says}" in log, log
        assert "jobd needs Redis 6.2 or later" in log
        assert "redis command connection ready" in log and "server too old" not in log, log
    finally:
        proxy.close()
