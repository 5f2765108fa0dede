import time

import pytest
from support.imageserver import ImageServer

from dcpipe.stages.sources import fetch as fetch_module
from dcpipe.stages.sources.fetch import FetchError, fetch


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        s.files["ok.jpg"] = b"\xff\xd8 image bytes"
        yield s


def _reason(source, **kw):
    with pytest.raises(FetchError) as info:
        fetch(source, **kw)
    return info.value.reason


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
    assert _reason(server.url("status/500")) == "http_500"


def test_redirects_only_to_http(server):
    assert fetch(server.url(f"redirect?to={server.url('f/ok.jpg')}")).startswith(b"\xff\xd8")
    assert _reason(server.url("redirect?to=file:///etc/passwd")) == "bad_redirect"
    assert _reason(server.url("redirect?to=ftp://127.0.0.1/x.jpg")) == "bad_redirect"


def test_slow_server_times_out_within_budget(server):
    start = time.monotonic()
    assert _reason(server.url("slow"), timeout=1.0) == "timeout"
    assert time.monotonic() - start < 3.0


def test_connection_reset(server):
    assert _reason(server.url("reset")) == "connection_error"


def test_bodies_are_capped(server):
    start = time.monotonic()
    assert _reason(server.url("endless"), max_bytes=1 << 20) == "too_large"
    assert _reason(server.url("announced-huge")) == "too_large"
    assert time.monotonic() - start < 5.0


def test_unusable_sources():
    assert _reason("") == "missing_source"
    assert _reason("ftp://127.0.0.1/x.jpg") == "unsupported_scheme"
    assert _reason("http://127.0.0.1:99999/x") == "bad_url"
    assert _reason("http://127.0.0.1:1/x", timeout=2) == "connection_error"


def test_header_lines_dripped_slowly_time_out_within_budget(server):
    start = time.monotonic()
    assert _reason(server.url("slow-headers"), timeout=1.5) == "timeout"
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
