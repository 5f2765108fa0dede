"""A real HTTP server on 127.0.0.1 (in a thread) serving images and misbehaving on purpose.

Routes: `/f/<name>` serves `server.files[name]` as image/jpeg (HTML too: a web page served as
an image); `/delay/<name>` (the same, 0.05 s late); `/status/<code>`; `/redirect?to=<url>`
(302); `/slow` (drips a byte every 0.2 s); `/slow-headers` (a header line every 0.5 s);
`/reset` (closes the connection with a TCP reset); `/endless` (a body with no end, capped here
at 64 MiB so the test server always stops); `/announced-huge` (Content-Length of 1 TB);
`/flaky/<name>?fail=N&how=503|stall` (the first N requests of that exact path answer 503, or
stall STALL_S and hang up; later ones serve the file); `/hangup/<name>` (serves the file as if
the connection stayed open, then closes it: what a server does to an idle kept-alive one);
`/gate/<name>?after=N` (serves the file once the server has had N other requests, or after
GATE_S: a slow server whose answer comes only if the client keeps working meanwhile).
Every loop is bounded in count and time.

`/f`, `/delay`, `/status`, `/redirect`, `/gate` and `/flaky` keep the connection open (HTTP/1.1
keep-alive); the hostile routes close it. `server.connections` counts the TCP connections
accepted, `server.hits[path]` the requests per path.
"""

import contextlib
import os
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DRIP_BYTES = 200
ENDLESS_CAP = 64 << 20
DELAY_S = 0.05
SLOW_HEADER_LINES = 40  # 20 s of headers: far beyond any test's timeout
STALL_S = 3.0  # a stalled answer: beyond the timeouts the tests give
GATE_S = 20.0  # the longest a gated answer waits for the requests it is waiting for


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _head(self, status, length=None, ctype="image/jpeg", extra=(), keep_alive=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in extra:
            self.send_header(name, value)
        if not keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()

    def handle(self):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()  # the client gave up (hostile routes) or hung up a kept-alive one

    def do_GET(self):
        self.server.count_hit(self.path)
        parts = urlsplit(self.path)
        route, _, arg = parts.path.lstrip("/").partition("/")
        handler = getattr(self, f"_route_{route.replace('-', '_')}", None)
        if handler is None:
            self._head(404, 0)
        else:
            handler(arg, parse_qs(parts.query))

    def _route_f(self, name, _):
        data = self.server.files.get(name)
        if data is None:
            return self._head(404, 0, keep_alive=True)
        self._head(200, len(data), keep_alive=True)
        self.wfile.write(data)

    def _route_delay(self, name, _):
        time.sleep(DELAY_S)
        self._route_f(name, None)

    def _route_status(self, code, _):
        self._head(int(code), 0, keep_alive=True)

    def _route_redirect(self, _, query):
        self._head(302, 0, extra=[("Location", query["to"][0])], keep_alive=True)

    def _route_gate(self, name, query):
        others = int(query["after"][0])
        deadline = time.monotonic() + GATE_S
        while sum(self.server.hits.values()) <= others and time.monotonic() < deadline:
            time.sleep(0.01)
        self._route_f(name, None)

    def _route_hangup(self, name, _):
        self._route_f(name, None)
        self.close_connection = True

    def _route_flaky(self, name, query):
        if self.server.hits[self.path] > int(query.get("fail", ["1"])[0]):
            return self._route_f(name, None)
        if query.get("how", ["503"])[0] == "stall":
            time.sleep(STALL_S)
            self.close_connection = True
        else:
            self._head(503, 0, keep_alive=True)

    def _route_slow(self, *_):
        self._head(200, DRIP_BYTES)
        for _ in range(DRIP_BYTES):
            self.wfile.write(b"\xff")
            self.wfile.flush()
            time.sleep(0.2)

    def _route_slow_headers(self, *_):
        self.send_response(200)
        for i in range(SLOW_HEADER_LINES):
            self.send_header(f"X-Drip-{i}", "1")
            self.flush_headers()
            time.sleep(0.5)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _route_reset(self, *_):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(self.connection.detach())  # the last close with linger 0 sends a TCP RST
        self.close_connection = True

    def _route_endless(self, *_):
        self._head(200)
        chunk = b"\xff\xd8" + b"\0" * 65534
        for _ in range(ENDLESS_CAP // len(chunk)):
            self.wfile.write(chunk)

    def _route_announced_huge(self, *_):
        self._head(200, 10**12)
        self.wfile.write(b"\xff\xd8")


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.connections, self.hits = {}, 0, Counter()
        self._lock = threading.Lock()

    def process_request(self, request, client_address):
        with self._lock:
            self.connections += 1
        super().process_request(request, client_address)

    def count_hit(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1


class ServedInThread:
    """An http.server serving from a daemon thread for the length of a `with` block."""

    def __init__(self, httpd):
        self.httpd = httpd
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class ImageServer(ServedInThread):
    def __init__(self):
        super().__init__(_CountingServer())
        self.files = self.httpd.files

    @property
    def connections(self) -> int:
        return self.httpd.connections

    @property
    def hits(self) -> Counter:
        return self.httpd.hits

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"
