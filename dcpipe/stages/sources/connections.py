"""Where an HTTP(S) request goes (straight to the host, or through a proxy from the environment)
and the kept-alive connections of one worker, reused for the next request to the same place.

Proxies are taken as urllib and requests take them: `http_proxy` / `HTTP_PROXY` for http URLs,
`https_proxy` / `HTTPS_PROXY` for https URLs (tunnelled with CONNECT), `no_proxy` / `NO_PROXY`
(comma list of hosts or domain suffixes, `*` for all) for hosts to reach directly. A proxy URL
may carry `user:password@`, sent as Basic Proxy-Authorization.
"""

import base64
import contextlib
import http.client
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass_environment

MAX_IDLE = 32  # kept-alive connections per worker, all hosts together (each holds a socket)


class ProxyError(ValueError):
    """A proxy setting that cannot be used (not an http:// proxy, no host)."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    headers: dict = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, url: str) -> "Proxy":
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ProxyError(f"only http:// proxies are supported, got {url!r}")
        headers = {}
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
        return cls(parts.hostname, parts.port or 80, headers)


@dataclass(frozen=True)
class Route:
    """One request's way: the connection's key in the pool, and what to send on it."""

    scheme: str
    host: str
    port: int
    target: str  # request target: the path, or the absolute URL when an http proxy forwards it
    proxy: Proxy | None = None
    address: str | None = None  # the checked address to connect to (public_only, no proxy)

    @property
    def key(self) -> tuple:
        return self.scheme, self.host, self.port, self.proxy, self.address

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new, not yet connected connection for this route."""
        https = self.scheme == "https"
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        if self.proxy is None:
            conn = cls(self.host, self.port, timeout=timeout)
            if self.address is not None:  # connect to the checked address, not a new DNS answer
                address, port = self.address, self.port
                conn._create_connection = lambda _, *args: socket.create_connection(
                    (address, port), *args)
            return conn
        conn = cls(self.proxy.host, self.proxy.port, timeout=timeout)
        if https:
            conn.set_tunnel(self.host, self.port, headers=self.proxy.headers)
        return conn

    @property
    def headers(self) -> dict:
        """Headers of the request itself (an http proxy reads its credentials from there)."""
        return self.proxy.headers if self.proxy and self.scheme == "http" else {}


def proxy_for(scheme: str, host: str, proxies: dict) -> Proxy | None:
    """The proxy a request to `host` goes through, from `proxies` (urllib's getproxies())."""
    url = proxies.get(scheme)
    if not url or proxy_bypass_environment(host, proxies):
        return None
    return Proxy.parse(url)


class Connections:
    """Idle kept-alive connections by route, at most MAX_IDLE (the oldest is closed first).

    Shared by the download threads of one worker: a connection is used by one request at a
    time (taken out, given back only after a complete response the server will not close).
    The proxy settings are read from the environment once, when the pool is made.
    """

    def __init__(self, proxies: dict | None = None):
        self.proxies = getproxies() if proxies is None else proxies
        self._idle: list[tuple[tuple, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def take(self, key: tuple) -> http.client.HTTPConnection | None:
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == key:
                    return self._idle.pop(i)[1]
        return None

    def give(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((key, conn))
            evicted = self._idle.pop(0)[1] if len(self._idle) > MAX_IDLE else None
        if evicted is not None:
            evicted.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
