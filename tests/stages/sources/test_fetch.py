import base64
import time

import pytest
from support.imageserver import ImageServer
from support.proxy import Proxy

from dcpipe.stages.sources import fetch as fetch_module
from dcpipe.stages.sources.connections import Connections
from dcpipe.stages.sources.fetch import FetchError, fetch

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        s.files["ok.jpg"] = b"\xff\xd8 image bytes"
        yield s


def _failure(source, **kw) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch(source, **kw)
    return info.value


def _reason(source, **kw):
    return _failure(source, **kw).reason


def test_local_path_and_file_url(tmp_path):
    path = tmp_path / "a b.jpg"
    path.write_bytes(b"abc")
    assert fetch(str(path)) == b"abc"
    assert fetch(path.as_uri()) == b"abc"
    assert _reason(str(tmp_path / "missing.jpg")) == "not_found"
    assert _reason(str(tmp_path)) == "not_a_file"
    assert _reason("/dev/zero") == "not_a_file"
    assert _reason(str(path), max_bytes=2) == "too_large"


def test_http_ok_and_status_codes(server):
    assert fetch(server.url("f/ok.jpg")) == b"\xff\xd8 image bytes"
    assert _reason(server.url("f/missing.jpg")) == "http_404"
    assert _reason(server.url("status/500"), retries=0) == "http_500"


def test_redirects_only_to_http(server):
    assert fetch(server.url(f"redirect?to={server.url('f/ok.jpg')}")).startswith(b"\xff\xd8")
    assert _reason(server.url("redirect?to=file:///etc/passwd")) == "bad_redirect"
    assert _reason(server.url("redirect?to=ftp://127.0.0.1/x.jpg")) == "bad_redirect"


def test_slow_server_times_out_within_budget(server):
    start = time.monotonic()
    assert _reason(server.url("slow"), timeout=1.0, retries=0) == "timeout"
    assert time.monotonic() - start < 3.0


def test_connection_reset(server):
    assert _reason(server.url("reset"), retries=0) == "connection_error"


def test_bodies_are_capped(server):
    start = time.monotonic()
    assert _reason(server.url("endless"), max_bytes=1 << 20) == "too_large"
    assert _reason(server.url("announced-huge")) == "too_large"
    assert time.monotonic() - start < 5.0


def test_unusable_sources():
    assert _reason("") == "missing_source"
    assert _reason("ftp://127.0.0.1/x.jpg") == "unsupported_scheme"
    assert _reason("http://127.0.0.1:99999/x") == "bad_url"
    assert _reason("http://127.0.0.1:1/x", timeout=2, retries=0) == "connection_error"


def test_header_lines_dripped_slowly_time_out_within_budget(server):
    start = time.monotonic()
    assert _reason(server.url("slow-headers"), timeout=1.5, retries=0) == "timeout"
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("url", [
    "http://[::1/x.jpg",  # unclosed IPv6 bracket
    f"http://{'a' * 64}.example.com/x.jpg",  # a host label over 63 characters
    "http://127.0.0.1/x\ud800.jpg",  # a lone surrogate
    "http://127.0.0.1/x.jpg?q=\ud800",
    "http://a\0b/x.jpg",  # a NUL byte in the host
])
def test_urls_that_cannot_be_requested_are_bad_url(url):
    assert _reason(url, timeout=2) == "bad_url"


def test_local_paths_that_cannot_be_opened_are_bad_path(tmp_path):
    assert _reason(f"{tmp_path}/x\0.jpg") == "bad_path"
    assert _reason(f"file://{tmp_path}/x%00.jpg") == "bad_path"
    assert _reason(f"{tmp_path}/x\ud800.jpg") == "bad_path"


def test_public_only_refuses_local_sources_and_private_addresses(server, tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    assert _reason(str(path), public_only=True) == "local_refused"
    assert _reason(path.as_uri(), public_only=True) == "local_refused"
    assert _reason(server.url("f/ok.jpg"), public_only=True) == "private_address"
    assert fetch(server.url("f/ok.jpg"), public_only=False) == b"\xff\xd8 image bytes"


def test_public_only_checks_every_redirect_hop(server, monkeypatch):
    # The test server is on 127.0.0.1, so for this test only that address counts as public:
    # the redirect to 127.0.0.2 (another loopback address) must be refused at its own hop.
    monkeypatch.setattr(fetch_module, "_refused", lambda address: str(address) != "127.0.0.1")
    port = server.httpd.server_address[1]
    assert fetch(server.url("f/ok.jpg"), public_only=True) == b"\xff\xd8 image bytes"
    hop = server.url(f"redirect?to=http://127.0.0.2:{port}/f/ok.jpg")
    assert _reason(hop, public_only=True, timeout=2) == "private_address"


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(fetch_module, "BACKOFF_S", 0.1)  # waits 0.1 s, 0.2 s, 0.4 s, ...


def test_server_errors_are_retried_with_growing_waits(server, quick_backoff):
    start = time.monotonic()
    assert fetch(server.url("flaky/ok.jpg?fail=2"), retries=2) == b"\xff\xd8 image bytes"
    assert server.hits["/flaky/ok.jpg?fail=2"] == 3
    assert time.monotonic() - start >= 0.1 + 0.2
    failure = _failure(server.url("flaky/ok.jpg?fail=9"), retries=3)
    assert (failure.reason, failure.attempts) == ("http_503", 4)
    assert server.hits["/flaky/ok.jpg?fail=9"] == 4


def test_only_failures_that_may_pass_are_retried(server, quick_backoff):
    failure = _failure(server.url("f/never-there.jpg"), retries=3)
    assert (failure.reason, failure.attempts) == ("http_404", 1)
    assert server.hits["/f/never-there.jpg"] == 1
    assert _failure(server.url("status/500"), retries=1).attempts == 2
    assert _failure(server.url("status/429"), retries=1).attempts == 2


def test_a_timed_out_attempt_is_retried_with_a_fresh_deadline(server, quick_backoff):
    url = server.url("flaky/ok.jpg?fail=1&how=stall")
    assert fetch(url, timeout=1.0, retries=1) == b"\xff\xd8 image bytes"
    failure = _failure(server.url("flaky/ok.jpg?fail=2&how=stall"), timeout=1.0, retries=1)
    assert (failure.reason, failure.attempts) == ("timeout", 2)


def test_downloads_from_one_host_reuse_a_connection(server):
    before = server.connections
    with Connections() as pool:
        for _ in range(6):
            assert fetch(server.url("f/ok.jpg"), connections=pool).startswith(b"\xff\xd8")
    assert server.connections - before == 1
    for _ in range(3):  # without a pool, each download has its own connection
        fetch(server.url("f/ok.jpg"))
    assert server.connections - before == 1 + 3


def test_a_connection_the_server_closed_while_idle_is_replaced(server):
    before = server.connections
    with Connections() as pool:
        assert fetch(server.url("hangup/ok.jpg"), connections=pool, retries=0)
        assert fetch(server.url("f/ok.jpg"), connections=pool, retries=0)
    assert server.connections - before == 2


@pytest.fixture
def proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with Proxy() as p:
        yield p


def test_http_proxy_from_the_environment_and_no_proxy_bypass(server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert fetch(server.url("f/ok.jpg")) == b"\xff\xd8 image bytes"
    assert proxy.forwarded == [server.url("f/ok.jpg")]
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
    assert fetch(server.url("f/ok.jpg")) == b"\xff\xd8 image bytes"
    assert proxy.forwarded == [server.url("f/ok.jpg")]


def test_proxy_credentials_are_sent_as_basic_auth(server, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url.replace("http://", "http://ann:s%40cret@"))
    fetch(server.url("f/ok.jpg"))
    assert proxy.credentials == ["Basic " + base64.b64encode(b"ann:s@cret").decode()]


def test_https_goes_through_a_connect_tunnel(server, proxy, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    port = server.port
    # the tunnel reaches the plain-HTTP test server, so the TLS handshake itself fails
    assert _reason(f"https://127.0.0.1:{port}/f/ok.jpg", retries=0) == "ssl_error"
    assert proxy.tunnels == [f"127.0.0.1:{port}"] and proxy.forwarded == []


def test_unusable_proxy_setting_is_each_rows_reject(server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
    assert _reason(server.url("f/ok.jpg")) == "bad_proxy"
