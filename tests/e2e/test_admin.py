"""The admin endpoint: /healthz and /metrics, scraped and parsed."""
import json
import re
import urllib.error
import urllib.request

from conftest import free_port, stats, submit, wait_for, wait_result

METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
                         r'(-?[0-9.e+-]+|\+Inf|NaN)$')


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


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
