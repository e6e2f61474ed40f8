"""The admin endpoint: /healthz and /metrics, scraped and parsed."""
import json
import os
import re
import resource
import select
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from conftest import NS, cpu_seconds, free_port, stats, submit, wait_for, wait_result

METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
                         r'(-?[0-9.e+-]+|\+Inf|NaN)$')


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def try_get(url):
    """The status, or None when the daemon closed or refused the connection."""
    try:
        return get(url)[0]
    except OSError:
        return None


def scrape(base):
    """The samples of /metrics, or None when the connection was refused."""
    try:
        return parse_metrics(get(base + "/metrics")[1])
    except OSError:
        return None


def raw(port, data):
    """Send DATA on a new connection and read until the daemon closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def closed_within(sock, seconds):
    """True when the daemon closes SOCK (EOF or reset) within SECONDS."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def parse_metrics(text):
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a valid exposition line: {line!r}"
        name_labels, value = line.rsplit(" ", 1)
        samples[name_labels] = float(value)
    return samples


def test_healthz_and_metrics(r, redis_server, start_jobd, tmp_path):
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    status, body = get(base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    for i in range(3):
        submit(r, {"id": f"m{i}", "type": "sleep", "ms": 1})
    submit(r, {"id": "bad", "type": "sleep"})
    submit(r, {"id": "to", "type": "sleep", "ms": 1000, "timeout_ms": 10})
    for i in ["m0", "m1", "m2", "bad", "to"]:
        wait_result(r, i)
    status, text = get(base + "/metrics")
    assert status == 200
    samples = parse_metrics(text)
    # Counters match NS:stats.
    for field, count in stats(r).items():
        job_type, status_name = field.split(".")
        key = f'jobd_jobs_total{{type="{job_type}",status="{status_name}"}}'
        assert samples[key] == count, key
    assert samples['jobd_job_duration_seconds_count{type="sleep"}'] == 4
    assert samples['jobd_redis_connected{connection="command"}'] == 1
    assert samples["jobd_dead_letters_total"] == 2
    for name in ["jobd_jobs_inflight", "jobd_threadpool_queue_depth", "jobd_retries_total",
                 "jobd_http_connections", "jobd_http_transfers", "jobd_postgres_waiting",
                 "jobd_redis_reconnects_total", 'jobd_build_info{version="0.1.0"}']:
        assert name in samples
    wait_for(lambda: 'jobd_stream_lag{stream="jobd:queue"}' in parse_metrics(get(base + "/metrics")[1]),
             timeout=8, what="stream lag")
    assert get(base + "/nope")[0] == 404
    head = raw(port, b"HEAD /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert raw(port, b"POST /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(port, b"nonsense\n\n").startswith(b"HTTP/1.1 400 ")
    big = b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert raw(port, big).startswith(b"HTTP/1.1 431 ")
    # Redis gone: unhealthy, with the reason.
    redis_server.kill()
    wait_for(lambda: get(base + "/healthz")[0] == 503, what="503")
    assert "redis" in json.loads(get(base + "/healthz")[1])["reason"]
    redis_server.start()
    daemon.wait_ready(15)
    wait_for(lambda: get(base + "/healthz")[0] == 200, timeout=10, what="healthy again")


def test_admin_port_in_use_fails_start(r, start_jobd, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", wait=False)
        assert daemon.proc.wait(5) == 1
        assert "admin.listen" in daemon.log_text()


def test_connection_cap(r, start_jobd):
    # Idle clients hold admin connections, each an fd the daemon's Redis,
    # PostgreSQL and HTTP connections need: above admin.max_connections a
    # new one is closed at once, counted and logged (once per 5 s), and
    # everything else goes on.
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", admin__max_connections=4)
    base = f"http://127.0.0.1:{port}"
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as extra:
                started = time.monotonic()
                assert closed_within(extra, 3), "a connection over the cap was kept"
                assert time.monotonic() - started < 1
        submit(r, {"id": "while-capped", "type": "sleep", "ms": 1})
        assert wait_result(r, "while-capped")["status"] == "succeeded"
        held.pop().close()
        wait_for(lambda: try_get(base + "/healthz") == 200, timeout=5, what="/healthz")
        # 3 held, and this one, once the daemon has seen the /healthz client close.
        samples = wait_for(lambda: (m := scrape(base)) and m["jobd_admin_connections"] == 4 and m,
                           timeout=5, what="4 open admin connections")
        assert samples["jobd_admin_connections_refused_total"] >= 3
        # Reloadable: from 4 to 6, two more are kept beside the 3 held.
        daemon.settings["admin"]["max_connections"] = 6
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
        held += [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        # All five watched at once for 0.5 s (one after another took up to
        # 2.5 s, and the first three meet their 5 s deadline soon after).
        closed, _, _ = select.select(held, [], [], 0.5)
        assert not closed
    finally:
        for s in held:
            s.close()
    assert daemon.log_text().count("admin: refused a connection") == 1


def test_slow_request_is_dropped(r, start_jobd):
    # Slowloris: a header every half second keeps an inactivity timeout from
    # ever firing; the connection is closed 5 s after it was accepted anyway.
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 12:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            closed = closed or closed_within(s, 0.5)
        took = time.monotonic() - started
    assert closed, "a request trickled in for 12 s and was still read"
    assert took < 7, f"closed after {took:.1f} s"
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200


def test_many_slow_requests_at_once_are_capped_and_timed_out(r, start_jobd):
    # Many slowloris clients at once, each trickling a byte of its head every
    # 0.2 s and never ending it: the ones past admin.max_connections are
    # closed at accept, the rest 5 s after theirs, and /healthz answers again.
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", admin__max_connections=8)
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
    started = time.monotonic()
    open_ = {s: True for s in slow}
    closed_at = {}
    try:
        while any(open_.values()) and time.monotonic() - started < 12:
            for s in slow:
                if not open_[s]:
                    continue
                try:
                    s.sendall(b"G")
                except (BrokenPipeError, ConnectionResetError):
                    open_[s] = False
                    closed_at.setdefault(s, time.monotonic() - started)
                    continue
                if closed_within(s, 0.01):
                    open_[s] = False
                    closed_at.setdefault(s, time.monotonic() - started)
            time.sleep(0.2)
    finally:
        for s in slow:
            s.close()
    assert len(closed_at) == 16, f"{16 - len(closed_at)} slow clients still open after 12 s"
    times = sorted(closed_at.values())
    assert times[7] < 1.5, times            # 8 refused at accept
    assert 4.5 < times[8] and times[15] < 7, times   # 8 admitted: the 5 s deadline
    samples = parse_metrics(get(f"http://127.0.0.1:{port}/metrics")[1])
    assert samples["jobd_admin_connections_refused_total"] == 8
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert "admin: refused a connection" in daemon.log_text()


def test_out_of_fds_does_not_spin_and_recovers(r, start_jobd):
    # accept() failing with EMFILE leaves the connection in the backlog and
    # the listening socket readable: a listener that simply tries again spins
    # the loop at 100% CPU. It must pause instead, and serve again once fds
    # are free.
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    pid = daemon.proc.pid
    assert get(base + "/healthz")[0] == 200

    def open_fds():
        return len(os.listdir(f"/proc/{pid}/fd"))

    limit = open_fds() + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE,
                     (limit, resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]))
    clients = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        wait_for(lambda: open_fds() >= limit, timeout=5, what="jobd to run out of fds")
        time.sleep(0.2)
        before = cpu_seconds(pid)
        time.sleep(2)
        used = cpu_seconds(pid) - before
        assert used < 0.4, f"jobd used {used:.2f} s of CPU in 2 s: it spins on accept()"
    finally:
        for s in clients:
            s.close()
    wait_for(lambda: try_get(base + "/healthz") == 200, timeout=5, what="/healthz again")
    assert daemon.log_text().count("admin: cannot accept connections") == 1


def test_answered_client_that_never_closes_frees_its_slot(r, start_jobd):
    # After its answer the daemon half-closes and waits for the client's
    # close; a client that never closes must still give its slot back (the
    # 5 s deadline), or such clients would fill admin.max_connections for good.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start_jobd(admin__listen=f"127.0.0.1:{port}", admin__max_connections=2)
    keep = []
    t0 = time.monotonic()
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):      # up to the daemon's FIN
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 "), data
            keep.append(s)                     # never closed by the client
        with socket.create_connection(("127.0.0.1", port)) as extra:
            assert closed_within(extra, 1)     # both slots still held
        wait_for(lambda: try_get(base + "/healthz") == 200, timeout=10, what="the slots freed")
        assert time.monotonic() - t0 >= 4.5
    finally:
        for s in keep:
            s.close()


def test_half_closed_request_gets_its_whole_answer(r, start_jobd):
    # The client sends its request and shuts its side at once (nc -N does):
    # its EOF must not cost it the answer. (On loopback the whole answer fits
    # in the kernel's send buffer, so this does not reach the branch that
    # waits for a partly written answer after the client's EOF.)
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    for path in (b"/healthz", b"/metrics"):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET " + path + b" HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert len(body) == int(re.search(rb"Content-Length: (\d+)", head).group(1))


def test_request_with_a_body_gets_its_405_whole(r, start_jobd):
    # A body is never read; it is drained after the answer instead of left in
    # the socket, where the kernel would answer it with a reset that can
    # destroy the 405 before the client reads it.
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    body = b"x" * 300000
    data = raw(port, b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
               % len(body) + body)
    head, _, text = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 "), head
    assert b"Allow: GET, HEAD" in head
    assert len(text) == int(re.search(rb"Content-Length: (\d+)", head).group(1))


@pytest.mark.parametrize("line, status", [
    (b"GET /metrics?" + b"a" * 3000 + b" HTTP/1.1", 200),    # a query of any length
    (b"GET /healthz?x=1 HTTP/1.0", 200),
    (b"GET /healthz HTTP/1.99999999999999999999", 200),     # sscanf's %d overflowed here
    (b"GET /healthz HTTP/2.0", 400),
    (b"GET /healthz HTTP/1.", 400),
    (b"GET /" + b"p" * 300 + b" HTTP/1.1", 400),            # a path longer than any of ours
    (b"GET  /healthz HTTP/1.1", 400),
    (b"GETTINGLONG /healthz HTTP/1.1", 400),
    (b"GET /healthz", 400),
])
def test_request_lines(r, start_jobd, line, status):
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}")
    head = raw(port, line + b"\r\n\r\n").partition(b"\r\n")[0]
    assert head.startswith(b"HTTP/1.1 %d " % status), head


def test_sighup_lowering_the_connection_cap(r, start_jobd):
    # From 6 to 2 while 4 clients are connected: the 4 keep their
    # connections and get their answers, every new one is refused (and
    # counted) while 2 or more are open, then exactly 2 are let in again;
    # jobs run throughout.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", admin__max_connections=6)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        with socket.create_connection(("127.0.0.1", port)) as fifth:
            assert not closed_within(fifth, 0.5)        # under the first cap
        daemon.settings["admin"]["max_connections"] = 2
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "applied" in daemon.log_text(), what="the reload")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as extra:
                assert closed_within(extra, 3), "a connection over the lowered cap was kept"
        # Those open before the reload finish normally (within their 5 s).
        s = held.pop()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 200 "), data
        wait_for(lambda: "admin: refused a connection" in daemon.log_text(), what="the log line")
        assert "admin.max_connections = 2" in daemon.log_text()
        submit(r, {"id": "while-lowered", "type": "sleep", "ms": 1})
        assert wait_result(r, "while-lowered")["status"] == "succeeded"
    finally:
        for s in held:
            s.close()
    wait_for(lambda: try_get(base + "/healthz") == 200, timeout=5, what="/healthz")
    samples = scrape(base)
    assert samples["jobd_admin_connections_refused_total"] >= 3, samples
    # The new cap is 2: one idle client and a second one are kept, a third is not.
    wait_for(lambda: (m := scrape(base)) and m["jobd_admin_connections"] == 1, timeout=5,
             what="only the scrape itself open")
    # (One at a time: the daemon may see the scrape's close after the next accept.)
    first = socket.create_connection(("127.0.0.1", port))
    second = None
    try:
        assert not closed_within(first, 0.5)
        second = socket.create_connection(("127.0.0.1", port))
        assert not closed_within(second, 0.5), "a second connection was refused under a cap of 2"
        with socket.create_connection(("127.0.0.1", port)) as third:
            assert closed_within(third, 3), "a third connection was kept under a cap of 2"
    finally:
        first.close()
        if second:
            second.close()
    submit(r, {"id": "after-lowered", "type": "sleep", "ms": 1})
    assert wait_result(r, "after-lowered")["status"] == "succeeded"


def test_a_long_stream_name_stays_one_whole_series(r, start_jobd):
    # Stream names may be 512 bytes. The lag table once kept 127 of them: the
    # whole name never matched the kept one, so every 5 s poll added another
    # (truncated) series with the same labels, which Prometheus refuses.
    port = free_port()
    stream = "jobs:" + "s" * 400
    start_jobd(admin__listen=f"127.0.0.1:{port}", intake__streams=[stream])
    base = f"http://127.0.0.1:{port}"
    series = f'jobd_stream_lag{{stream="{stream}"}} '
    wait_for(lambda: series in get(base + "/metrics")[1], timeout=8, what="the first lag poll")
    time.sleep(5.5)     # a second poll
    lines = get(base + "/metrics")[1].splitlines()
    for family in ("jobd_stream_lag", "jobd_stream_pending"):
        mine = [line for line in lines if line.startswith(family + "{")]
        assert len(mine) == 1 and mine[0].startswith(f'{family}{{stream="{stream}"}} '), mine


def test_every_configured_stream_gets_lag_and_pending(r, start_jobd):
    # intake.streams may list 256 streams; the metrics table held 64, and
    # streams past the 64th silently had no lag or pending series.
    port = free_port()
    streams = [f"q{i}" for i in range(256)]
    start_jobd(admin__listen=f"127.0.0.1:{port}", intake__streams=streams)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: 'jobd_stream_pending{stream="q255"}' in get(base + "/metrics")[1],
             timeout=8, what="the last stream's series")
    samples = parse_metrics(get(base + "/metrics")[1])
    for family in ("jobd_stream_lag", "jobd_stream_pending"):
        assert all(f'{family}{{stream="{s}"}}' in samples for s in streams), family


def test_stream_lag_left_out_when_redis_does_not_know_it(r, start_jobd):
    # Redis 7 reports a group's lag as nil when entries were deleted past
    # what the group read: it was exported as -1, which reads as a value.
    port = free_port()
    start_jobd(admin__listen=f"127.0.0.1:{port}", limits__max_inflight=1)
    base = f"http://127.0.0.1:{port}"
    submit(r, {"id": "long", "type": "sleep", "ms": 20000})
    wait_for(lambda: r.xinfo_groups(f"{NS}:queue")[0]["pending"] == 1, what="the job taken")
    unread = [submit(r, {"id": f"u{i}", "type": "sleep", "ms": 1}) for i in range(3)]
    r.xdel(f"{NS}:queue", unread[1])
    if r.xinfo_groups(f"{NS}:queue")[0]["lag"] is not None:
        pytest.skip("this Redis knows the lag (older than 7.0, or it changed)")
    wait_for(lambda: 'jobd_stream_pending{stream="jobd:queue"}' in get(base + "/metrics")[1],
             timeout=8, what="the first lag poll")
    samples = parse_metrics(get(base + "/metrics")[1])
    assert samples['jobd_stream_pending{stream="jobd:queue"}'] == 1
    assert 'jobd_stream_lag{stream="jobd:queue"}' not in samples, samples


def test_stream_gauges_go_when_xinfo_fails_and_come_back(r, start_jobd):
    # A stream whose XINFO GROUPS failed (its key deleted, another type,
    # NOPERM, the connection lost) kept its last lag and pending in /metrics
    # forever, read as current. Now its series go until a read succeeds.
    port = free_port()
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", limits__max_inflight=1)
    base = f"http://127.0.0.1:{port}"
    pending = f'jobd_stream_pending{{stream="{NS}:queue"}}'
    lag = f'jobd_stream_lag{{stream="{NS}:queue"}}'
    # The one slot held throughout: the daemon does not read, so it does not
    # make the stream and its group again on its own.
    submit(r, {"id": "long", "type": "sleep", "ms": 60000})
    wait_for(lambda: (parse_metrics(get(base + "/metrics")[1]).get(pending) == 1),
             timeout=8, what="pending 1 in /metrics")

    def gone():
        samples = parse_metrics(get(base + "/metrics")[1])
        return pending not in samples and lag not in samples

    r.delete(f"{NS}:queue")                 # XINFO GROUPS: ERR no such key
    wait_for(gone, timeout=8, what="the series of the deleted stream to go")
    r.set(f"{NS}:queue", "not a stream")    # WRONGTYPE
    time.sleep(5.5)                         # a poll that fails again
    assert gone()
    assert daemon.log_text().count(f"lag and pending of stream {NS}:queue left out") == 1
    # Readable again: the series return.
    r.delete(f"{NS}:queue")
    r.xgroup_create(f"{NS}:queue", "jobd", id="0", mkstream=True)
    wait_for(lambda: parse_metrics(get(base + "/metrics")[1]).get(pending) == 0,
             timeout=8, what="the series back")


def test_a_redis_outage_drops_the_stream_gauges_without_a_line_per_stream(redis_server, r,
                                                                          start_jobd):
    # With the connection gone every stream's poll fails at once: its series
    # go, but the log said so once per stream, up to 256 lines an outage,
    # beside redis.c's own lines about the connection.
    port = free_port()
    streams = [f"q{i}" for i in range(20)]
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", intake__streams=streams)
    base = f"http://127.0.0.1:{port}"
    last = 'jobd_stream_pending{stream="q19"}'
    wait_for(lambda: last in get(base + "/metrics")[1], timeout=8, what="the series")
    redis_server.kill()
    try:
        wait_for(lambda: "jobd_stream_pending{" not in get(base + "/metrics")[1], timeout=12,
                 what="every stream's series to go")
    finally:
        redis_server.start()
    assert daemon.log_text().count("left out of /metrics") == 0, daemon.log_text()
    wait_for(lambda: last in get(base + "/metrics")[1], timeout=15, what="the series back")


def test_a_stream_unreadable_from_the_start_is_said_once_in_the_log(r, start_jobd):
    # Only a stream whose series had been shown was said to be left out: one
    # whose XINFO GROUPS failed from the first poll never was.
    port = free_port()
    r.set("bad", "not a stream")
    daemon = start_jobd(admin__listen=f"127.0.0.1:{port}", intake__streams=[f"{NS}:queue", "bad"])
    base = f"http://127.0.0.1:{port}"
    line = "lag and pending of stream bad left out of /metrics"
    wait_for(lambda: line in daemon.log_text(), timeout=8, what="the line about stream bad")
    time.sleep(5.5)                         # another poll that fails
    assert daemon.log_text().count(line) == 1, daemon.log_text()
    samples = parse_metrics(get(base + "/metrics")[1])
    assert 'jobd_stream_pending{stream="bad"}' not in samples, samples
    assert f'jobd_stream_pending{{stream="{NS}:queue"}}' in samples, samples
