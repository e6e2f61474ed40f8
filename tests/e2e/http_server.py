"""A real HTTP server for the tests, on a free loopback port in a thread.

Paths:
  /status/<code>            that status, small body
  /delay/<ms>               answers after ms
  /bytes/<n>                n bytes with Content-Length
  /chunked/<n>              n bytes, chunked, no length known up front
  /redirect/<n>             n redirects, then 200 "done"
  /echo                     the request (method, headers, body) as JSON
  /json, /notjson           a JSON document, or text that is not
  /json-nul                 {"x": "\u0000"}
  /json-deep/<n>            arrays nested n deep
  /retry/<key>/<fails>      429 with Retry-After: 1 the first <fails> times per key
  /retry-after/<value>      503 with Retry-After: <value>, as given
  /flaky/<key>              fails (503) every other request per key
  /slow-chunks/<n>          n chunks of 64 KiB, 100 ms apart
  /concurrent               counts overlapping requests (sleeps 50 ms)
  /hangup                   200 "bye" as if keep-alive, then the server closes
                            the connection 100 ms later (an idle timeout)
  /goto/<name>              302 to state.targets[name], an absolute URL (to
                            another server or scheme) set by the test

HttpServer(tls=self_signed_cert(dir)) serves the same over https.
"""
import json
import os
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.counters = {}
        self.active = 0
        self.max_active = 0
        self.requests = 0
        self.connections = 0
        self.paths = []             # every request's path, in arrival order
        self.targets = {}           # /goto/<name> -> Location

    def bump(self, key):
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()     # in this thread: see HttpServer
        super().setup()
        with self.server.state.lock:
            self.server.state.connections += 1

    def send(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if code in (204, 304):      # RFC 9110: no content, and no length for it
            body = b""
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def chunked(self, n, chunk=65536, pause=0.0):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"x" * chunk
        left = n
        try:
            while left > 0:
                part = block[:min(chunk, left)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                left -= len(part)
                if pause:
                    self.wfile.flush()
                    time.sleep(pause)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def handle_any(self):
        state = self.server.state
        with state.lock:
            state.requests += 1
            state.paths.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("?")[0].strip("/").split("/")
        kind = parts[0]
        if kind == "status":
            self.send(int(parts[1]), b"status %s" % parts[1].encode())
        elif kind == "delay":
            time.sleep(int(parts[1]) / 1000)
            self.send(200, b"late")
        elif kind == "bytes":
            self.send(200, b"y" * int(parts[1]))
        elif kind == "zeros":   # a JSON array of N zeros: 2N+1 bytes, N values parsed
            self.send(200, b"[" + b",".join([b"0"] * int(parts[1])) + b"]",
                      {"Content-Type": "application/json"})
        elif kind == "chunked":
            self.chunked(int(parts[1]))
        elif kind == "slow-chunks":
            self.chunked(int(parts[1]) * 65536, pause=0.1)
        elif kind == "redirect":
            n = int(parts[1])
            if n > 0:
                self.send(302, b"", {"Location": f"/redirect/{n - 1}"})
            else:
                self.send(200, b"done")
        elif kind == "goto":
            self.send(302, b"", {"Location": state.targets[parts[1]]})
        elif kind == "echo":
            doc = {"method": self.command, "headers": dict(self.headers.items()),
                   "body": body.decode(errors="replace")}
            self.send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        elif kind == "json":
            self.send(200, b'{"a": [1, 2, {"b": null}], "ok": true}')
        elif kind == "json-nul":
            self.send(200, b'{"x": "\\u0000"}')
        elif kind == "json-deep":
            n = int(parts[1])
            self.send(200, b"[" * n + b"]" * n)
        elif kind == "notjson":
            self.send(200, b"<html>nope</html>")
        elif kind == "retry":
            if state.bump(parts[1]) <= int(parts[2]):
                self.send(429, b"slow down", {"Retry-After": "1"})
            else:
                self.send(200, b"finally")
        elif kind == "retry-after":
            self.send(503, b"come back later", {"Retry-After": parts[1]})
        elif kind == "flaky":
            if state.bump(parts[1]) % 2 == 1:
                self.send(503, b"try again")
            else:
                self.send(200, b"ok")
        elif kind == "concurrent":
            with state.lock:
                state.active += 1
                state.max_active = max(state.max_active, state.active)
            time.sleep(0.05)
            with state.lock:
                state.active -= 1
            self.send(200, b"c")
        elif kind == "hangup":
            self.send(200, b"bye")
            self.wfile.flush()
            time.sleep(0.1)
            self.close_connection = True
        else:
            self.send(404, b"no such path")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def self_signed_cert(directory):
    """A certificate for 127.0.0.1 (and its key), made now: (cert, key) paths.
    The daemon trusts it through http.ca_file."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


class HttpServer:
    def __init__(self, tls=None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "https" if tls else "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            # Handshakes happen in the handler's thread (Handler.setup), not
            # in accept(), so one slow client does not stall the others.
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.server.daemon_threads = True
        self.server.state = State()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def state(self):
        return self.server.state

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
