"""Source -> bytes, for local paths, `file://` URLs and `http(s)://` URLs, with hard limits.

Every failure is a `FetchError` whose `reason` is a short stable word for the reject record:
`http_404` (any HTTP status that is not 2xx), `timeout` (the whole request, redirects, headers
and body included, exceeded `timeout` seconds: a server dripping bytes or header lines cannot
hold a worker), `too_large` (the body, or its announced length, exceeds `max_bytes`: reading
stops at the cap), `connection_error` (refused, reset, closed early), `dns_error`, `ssl_error`,
`bad_redirect` (no Location, or a redirect to a scheme other than http/https such as file:// or
ftp://), `too_many_redirects`, `incomplete_body`, `bad_response`, `bad_url` (a URL that cannot
be requested: bad IPv6 brackets or port, an over-long host label, control characters, lone
surrogates), `bad_proxy` (a proxy setting that is not an http:// URL), `unsupported_scheme`,
`missing_source`, and for local files `not_found`,
`not_a_file`, `permission_denied`, `bad_path` (a NUL byte or undecodable text), `read_error`.

The source list may name any local file the user chose, and any address. With
`public_only=True` local paths and `file://` URLs are refused (`local_refused`) and so are hosts
that resolve to a private, loopback, link-local or otherwise non-global address
(`private_address`), checked on every redirect hop and connected to by the checked address (no
second DNS answer; through a proxy, the proxy resolves the name again). Local reads are bounded
by `max_bytes` too and refuse devices and pipes.

HTTP(S) downloads go through the proxy the environment names (`connections.py`), reuse
kept-alive connections of the `Connections` pool they are given, and are tried again up to
`retries` times when the failure may pass (an HTTP 5xx or 429, `timeout`, `connection_error`,
`incomplete_body`), after BACKOFF_S, then twice that, and so on. `timeout` bounds each attempt;
the error of the last attempt says how many there were (`FetchError.attempts`).
"""

import contextlib
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from urllib.parse import quote, unquote, urljoin, urlsplit
from urllib.request import url2pathname

from dcpipe.stages.sources.connections import Connections, ProxyError, Route, proxy_for

TIMEOUT = 10.0  # seconds per download attempt, everything included
MAX_BYTES = 20_000_000  # a body or file larger than this is refused
MAX_REDIRECTS = 5
RETRIES = 2  # attempts after the first, for failures that may pass
BACKOFF_S = 0.5  # wait before the first retry; doubled before each next one
_TRANSIENT = {"timeout", "connection_error", "incomplete_body", "http_429"}  # and every http_5xx
CHUNK = 1 << 16
USER_AGENT = "dcpipe-shard/0.1"
_REDIRECTS = (301, 302, 303, 307, 308)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class FetchError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail
        self.attempts: int | None = None  # of an HTTP(S) download: how many were tried

    @property
    def transient(self) -> bool:
        return self.reason in _TRANSIENT or self.reason.startswith("http_5")


def fetch(source: str, *, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES,
          public_only: bool = False, retries: int = RETRIES,
          connections: Connections | None = None) -> bytes:
    """The bytes of `source`. `connections`: the pool whose kept-alive connections a download
    reuses (without one, each download opens and closes its own)."""
    if not source:
        raise FetchError("missing_source")
    scheme = _split(source).scheme.lower()
    if scheme in ("http", "https"):
        if connections is not None:
            return _fetch_http_retried(source, timeout, max_bytes, public_only, retries,
                                       connections)
        with Connections() as own:
            return _fetch_http_retried(source, timeout, max_bytes, public_only, retries, own)
    if scheme not in ("", "file") and len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
        raise FetchError("unsupported_scheme", scheme)
    if public_only:
        raise FetchError("local_refused", "local paths and file:// URLs are refused (public_only)")
    return read_local(_file_url_path(source) if scheme == "file" else source, max_bytes)


def _split(url: str):
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise FetchError("bad_url", str(exc)) from exc


def _file_url_path(url: str) -> str:
    parts = _split(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError("unsupported_scheme", f"file URL on host {parts.netloc}")
    return url2pathname(unquote(parts.path))


def read_local(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise FetchError("not_a_file", path)
            data = f.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise FetchError("not_found", path) from exc
    except IsADirectoryError as exc:
        raise FetchError("not_a_file", path) from exc
    except PermissionError as exc:
        raise FetchError("permission_denied", path) from exc
    except OSError as exc:
        raise FetchError("read_error", f"{path}: {exc}") from exc
    except ValueError as exc:  # an embedded NUL byte, a lone surrogate
        raise FetchError("bad_path", f"{path!r}: {exc}") from exc
    if len(data) > max_bytes:
        raise FetchError("too_large", f"more than {max_bytes} bytes")
    return data


class _Watchdog:
    """Shuts down the socket of the request in flight when the download's deadline passes.

    Socket timeouts count per call, so a server that sends one header line at a time would
    restart them forever; this bounds connect, headers and body together.
    """

    def __init__(self, deadline: float):
        self.sock = None
        self.fired = False
        self._lock = threading.Lock()  # a socket given back to the pool is never shut down
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self):
        with self._lock:
            self.fired = True
            if self.sock is not None:
                with contextlib.suppress(OSError):  # the plain socket's shutdown, also under TLS
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def watch(self, sock) -> None:
        with self._lock:
            self.sock = sock

    def release(self) -> bool:
        """Stop watching the socket; True if it is still usable (the deadline did not pass)."""
        with self._lock:
            self.sock = None
            return not self.fired

    def cancel(self):
        self._timer.cancel()


def _fetch_http_retried(url: str, timeout: float, max_bytes: int, public_only: bool,
                       retries: int, connections: Connections) -> bytes:
    attempt = 1
    while True:
        try:
            return _fetch_http(url, time.monotonic() + timeout, max_bytes, public_only,
                               connections)
        except FetchError as exc:
            exc.attempts = attempt
            if attempt > retries or not exc.transient:
                raise
        time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        attempt += 1


def _fetch_http(url: str, deadline: float, max_bytes: int, public_only: bool,
                connections: Connections) -> bytes:
    watchdog = _Watchdog(deadline)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            status, location, body = _http_get_once(url, deadline, max_bytes, public_only,
                                                    watchdog, connections)
            if status not in _REDIRECTS:
                return body
            if not location:
                raise FetchError("bad_redirect", f"{status} without Location")
            url = urljoin(url, location)
            if _split(url).scheme.lower() not in ("http", "https"):
                raise FetchError("bad_redirect", f"to {_split(url).scheme or 'no'} scheme")
        raise FetchError("too_many_redirects", f"more than {MAX_REDIRECTS}")
    finally:
        watchdog.cancel()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timeout")
    return left


def _request_target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target); whatever in the URL's text cannot be requested
    fails here as `bad_url`, before any connection."""
    parts = _split(url)
    try:
        host, port = parts.hostname, parts.port
        if not host or any(c <= " " for c in host):
            raise ValueError(f"no usable host in {url!r}")
        host.encode("idna")  # a label over 63 characters, an empty label
        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    except (ValueError, UnicodeError) as exc:
        raise FetchError("bad_url", str(exc)) from exc
    scheme = parts.scheme.lower()
    return scheme, host, port or _DEFAULT_PORTS[scheme], target


def _refused(address) -> bool:
    """Private, loopback, link-local, shared, reserved, multicast: anything not public."""
    return not address.is_global or address.is_multicast


def _public_address(host: str, port: int) -> str:
    """The address to connect to; refused unless every address of `host` is a global one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError("dns_error", str(exc)) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if _refused(address):
            raise FetchError("private_address", f"{host} is {address} (public_only)")
    return infos[0][4][0]


def _route(url: str, public_only: bool, proxies: dict) -> Route:
    """Where the request for `url` goes: straight to the host (by the checked address under
    public_only) or through the proxy the environment names for it."""
    scheme, host, port, target = _request_target(url)
    try:
        proxy = proxy_for(scheme, host, proxies)
    except ProxyError as exc:
        raise FetchError("bad_proxy", str(exc)) from exc
    address = _public_address(host, port) if public_only else None
    if proxy is None:
        return Route(scheme, host, port, target, address=address)
    if scheme == "http":  # the proxy forwards the request: it needs the whole URL
        netloc = f"[{host}]" if ":" in host else host
        target = f"http://{netloc}:{port}{target}"
    return Route(scheme, host, port, target, proxy)


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: the request goes on a new one."""


def _http_get_once(url: str, deadline: float, max_bytes: int, public_only: bool, watchdog,
                   connections: Connections):
    """(status, Location, body); the body is read only for a 2xx answer."""
    route = _route(url, public_only, connections.proxies)
    idle = connections.take(route.key)
    if idle is not None:
        with contextlib.suppress(_StaleConnection):
            return _exchange(idle, route, deadline, max_bytes, watchdog, connections)
    conn = route.connection(_remaining(deadline))
    return _exchange(conn, route, deadline, max_bytes, watchdog, connections)


def _exchange(conn, route: Route, deadline: float, max_bytes: int, watchdog,
              connections: Connections):
    """One request and its answer on `conn`, which goes back to the pool if the server keeps
    it open and the whole body was read; else it is closed."""
    reused, keep = conn.sock is not None, False
    try:
        if not reused:
            conn.connect()
        watchdog.watch(sock := conn.sock)  # getresponse may hand the socket to the response
        sock.settimeout(_remaining(deadline))
        resp = _request(conn, route, reused)
        if resp.status in _REDIRECTS:
            return resp.status, resp.getheader("Location"), b""
        if not 200 <= resp.status < 300:
            raise FetchError(f"http_{resp.status}")
        body = _read_body(sock, resp, deadline, max_bytes)
        keep = not resp.will_close and not resp.length  # all of the body was read
        resp.close()  # the connection may send its next request
        return resp.status, None, body
    except (FetchError, _StaleConnection):
        raise
    except Exception as exc:
        error = _network_error(exc, deadline)
        if error is None:
            raise
        raise error from exc
    finally:
        if watchdog.release() and keep:
            connections.give(route.key, conn)
        else:
            conn.close()


def _request(conn, route: Route, reused: bool):
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*, */*", **route.headers}
    try:
        conn.request("GET", route.target, headers=headers)
        return conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
        if reused:  # the server closed it while it was idle: nothing was answered
            raise _StaleConnection() from exc
        raise


def _network_error(exc: Exception, deadline: float) -> FetchError | None:
    """The FetchError for what a connection raised (None: not a network error); past the
    deadline it is always a timeout (the watchdog's shutdown surfaces as a closed connection)."""
    if time.monotonic() >= deadline or isinstance(exc, (socket.timeout, TimeoutError)):
        return FetchError("timeout")
    for kinds, reason in _NETWORK_REASONS:
        if isinstance(exc, kinds):
            detail = (str(exc) if reason in ("incomplete_body", "dns_error", "ssl_error")
                      else exc.__class__.__name__)
            return FetchError(reason, detail)
    if isinstance(exc, OSError):
        return FetchError("connection_error", str(exc))
    return None


_NETWORK_REASONS = (  # first match wins
    (http.client.IncompleteRead, "incomplete_body"),
    (socket.gaierror, "dns_error"),
    (ssl.SSLError, "ssl_error"),
    ((ConnectionError, http.client.RemoteDisconnected), "connection_error"),
    (http.client.HTTPException, "bad_response"),
)


def _read_body(sock, resp, deadline: float, max_bytes: int) -> bytes:
    announced = resp.getheader("Content-Length")
    if announced and announced.isdigit() and int(announced) > max_bytes:
        raise FetchError("too_large", f"Content-Length {announced}")
    chunks, size = [], 0
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = resp.read1(CHUNK)
        if not chunk:
            _remaining(deadline)  # an end caused by the watchdog is a timeout, not a body
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError("too_large", f"more than {max_bytes} bytes")
        chunks.append(chunk)
