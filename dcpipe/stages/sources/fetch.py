"""Source -> bytes, for local paths, `file://` URLs and `http(s)://` URLs, with hard limits.

Every failure is a `FetchError` whose `reason` is a short stable word for the reject record:
`http_404` (any HTTP status that is not 2xx), `timeout` (the whole request, redirects and body
included, exceeded `timeout` seconds: a slow-drip server cannot hold a worker), `too_large`
(the body, or its announced length, exceeds `max_bytes`: reading stops at the cap),
`connection_error` (refused, reset, closed early), `dns_error`, `ssl_error`, `bad_redirect`
(no Location, or a redirect to a scheme other than http/https such as file:// or ftp://),
`too_many_redirects`, `incomplete_body`, `bad_response`, `bad_url`, `unsupported_scheme`,
`missing_source`, and for local files `not_found`, `not_a_file`, `permission_denied`,
`read_error`. The source list may name any local file the user chose; local reads are bounded
by `max_bytes` too and refuse devices and pipes.
"""

import http.client
import os
import socket
import ssl
import stat
import time
from urllib.parse import quote, unquote, urljoin, urlsplit
from urllib.request import url2pathname

TIMEOUT = 10.0  # seconds per download (connect, and between bytes)
MAX_BYTES = 20_000_000  # a body or file larger than this is refused
MAX_REDIRECTS = 5
CHUNK = 1 << 16
USER_AGENT = "dcpipe-shard/0.1"
_REDIRECTS = (301, 302, 303, 307, 308)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


class FetchError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def fetch(source: str, *, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES) -> bytes:
    if not source:
        raise FetchError("missing_source")
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(source, time.monotonic() + timeout, max_bytes)
    if scheme == "file":
        return read_local(_file_url_path(source), max_bytes)
    if len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
        raise FetchError("unsupported_scheme", scheme)
    return read_local(source, max_bytes)


def _file_url_path(url: str) -> str:
    parts = urlsplit(url)
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
    if len(data) > max_bytes:
        raise FetchError("too_large", f"more than {max_bytes} bytes")
    return data


def _fetch_http(url: str, deadline: float, max_bytes: int) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _http_get_once(url, deadline, max_bytes)
        if status not in _REDIRECTS:
            return body
        if not location:
            raise FetchError("bad_redirect", f"{status} without Location")
        url = urljoin(url, location)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise FetchError("bad_redirect", f"to {urlsplit(url).scheme or 'no'} scheme")
    raise FetchError("too_many_redirects", f"more than {MAX_REDIRECTS}")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timeout")
    return left


def _connection(url: str, deadline: float):
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise FetchError("bad_url", str(exc)) from exc
    if not host:
        raise FetchError("bad_url", url)
    https = parts.scheme.lower() == "https"
    cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    target = quote(parts.path or "/", safe=_PATH_SAFE) + (f"?{parts.query}" if parts.query else "")
    return cls(host, port, timeout=_remaining(deadline)), target


def _http_get_once(url: str, deadline: float, max_bytes: int):
    """(status, Location, body); the body is read only for a 2xx answer."""
    conn, target = _connection(url, deadline)
    try:
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*, */*"})
        sock = conn.sock  # getresponse may hand the socket over to the response
        resp = conn.getresponse()
        if resp.status in _REDIRECTS:
            return resp.status, resp.getheader("Location"), b""
        if not 200 <= resp.status < 300:
            raise FetchError(f"http_{resp.status}")
        return resp.status, None, _read_body(sock, resp, deadline, max_bytes)
    except FetchError:
        raise
    except (socket.timeout, TimeoutError) as exc:
        raise FetchError("timeout") from exc
    except http.client.IncompleteRead as exc:
        raise FetchError("incomplete_body", str(exc)) from exc
    except socket.gaierror as exc:
        raise FetchError("dns_error", str(exc)) from exc
    except ssl.SSLError as exc:
        raise FetchError("ssl_error", str(exc)) from exc
    except (ConnectionError, http.client.RemoteDisconnected) as exc:
        raise FetchError("connection_error", exc.__class__.__name__) from exc
    except http.client.HTTPException as exc:
        raise FetchError("bad_response", exc.__class__.__name__) from exc
    except OSError as exc:
        raise FetchError("connection_error", str(exc)) from exc
    finally:
        conn.close()


def _read_body(sock, resp, deadline: float, max_bytes: int) -> bytes:
    announced = resp.getheader("Content-Length")
    if announced and announced.isdigit() and int(announced) > max_bytes:
        raise FetchError("too_large", f"Content-Length {announced}")
    chunks, size = [], 0
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = resp.read1(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError("too_large", f"more than {max_bytes} bytes")
        chunks.append(chunk)
