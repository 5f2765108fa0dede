"""A real forward HTTP proxy on 127.0.0.1 (in a thread) that records what it was asked to do.

`GET http://host:port/path` (absolute form, as clients send it to a proxy) is forwarded to the
host and the answer relayed; `CONNECT host:port` opens a tunnel and pipes bytes both ways.
`proxy.forwarded` lists the absolute URLs forwarded, `proxy.tunnels` the CONNECT targets,
`proxy.credentials` every Proxy-Authorization header received.
"""

import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from support.imageserver import ServedInThread

TUNNEL_IDLE_S = 5.0  # a tunnel with no traffic for this long is closed: the proxy always stops


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _record(self, kind: str, what: str) -> None:
        with self.server.lock:
            getattr(self.server, kind).append(what)
            if "Proxy-Authorization" in self.headers:
                self.server.credentials.append(self.headers["Proxy-Authorization"])

    def do_GET(self):
        self._record("forwarded", self.path)
        parts = urlsplit(self.path)
        upstream = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
        try:
            upstream.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self):
        self._record("tunnels", self.path)
        host, _, port = self.path.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            _pipe(self.connection, upstream)
        self.close_connection = True


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Bytes both ways until either side closes or nothing moves for TUNNEL_IDLE_S."""
    peers = {a: b, b: a}
    while True:
        ready, _, _ = select.select(list(peers), [], [], TUNNEL_IDLE_S)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(1 << 16)
            if not data:
                return
            peers[sock].sendall(data)


class Proxy(ServedInThread):
    def __init__(self):
        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), _Handler))
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.forwarded = self.httpd.forwarded = []
        self.tunnels = self.httpd.tunnels = []
        self.credentials = self.httpd.credentials = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
