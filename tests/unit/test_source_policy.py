"""http(s) sources reach public addresses only, and the hosts the configuration lists: checked
after resolution and before connecting, redirects included. Tests connect to loopback only."""

from __future__ import annotations

import http.server

import pytest

from tests.helpers.http import FileServer, LocalHTTPServer
from vivit_batch.config import SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.source_policy import parse_allow_hosts, refusal
from vivit_batch.source_versions import source_version
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, decode_video

NOBODY: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fe80::1%eth0", "link-local (cloud metadata)"),
        ("::ffff:169.254.169.254", "link-local (cloud metadata)"),  # IPv4-mapped IPv6
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),  # unique-local: the EC2 metadata service over IPv6
        ("fc00::1", "private"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("0.0.0.0", "private"),  # "this network": Linux connects it to loopback
        ("224.0.0.1", "non-public"),
    ],
)
def test_addresses_that_are_not_public_are_refused(address, kind):
    reason = refusal("videos.example", address, 80, NOBODY)
    assert reason is not None and f"is a {kind} address" in reason
    assert "manifest.http_allow_hosts=videos.example:80" in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.4.4"])
def test_public_addresses_are_allowed(address):
    assert refusal("videos.example", address, 443, NOBODY) is None


def test_listed_hosts_are_allowed_by_name_or_address_and_port():
    allowed = parse_allow_hosts([" Cache.internal", "10.0.0.5:8080 ", ""])
    assert allowed == {"cache.internal", "10.0.0.5:8080"}
    assert refusal("cache.internal", "10.9.9.9", 80, allowed) is None
    assert refusal("Cache.Internal", "10.9.9.9", 8443, allowed) is None
    assert refusal("10.0.0.5", "10.0.0.5", 8080, allowed) is None
    assert refusal("10.0.0.5", "10.0.0.5", 8081, allowed) is not None  # another port
    assert refusal("other.internal", "10.0.0.5", 80, allowed) is not None


class Counting(FileServer):
    """Serves a directory and counts the requests it gets."""

    def __init__(self, directory):
        super().__init__(directory)
        self.requests = 0
        handle = self.httpd.RequestHandlerClass

        def counted(*args, **kwargs):
            self.requests += 1
            return handle(*args, **kwargs)

        self.httpd.RequestHandlerClass = counted


class Redirecting(LocalHTTPServer):
    """Answers every request with a redirect to `target`."""

    def __init__(self, target: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        super().__init__(Handler)


@pytest.fixture()
def served(tmp_path):
    write_video(tmp_path / "v.mp4", num_frames=20, content="detailed")
    server = Counting(tmp_path)
    yield server
    server.stop()


def decode(uri: str, allow_hosts: tuple[str, ...] = ()) -> None:
    request = DecodeRequest(
        uri,
        SamplingConfig(num_frames=4, frame_sample_rate=1),
        ProcessorConfig(shortest_edge=32, crop_height=32, crop_width=32),
        storage_options={"http_allow_hosts": allow_hosts},
    )
    return decode_video(request)


def test_a_loopback_source_not_listed_is_refused_before_any_request(served):
    with pytest.raises(VideoError) as refused:
        decode(f"{served.url}/v.mp4")
    assert refused.value.code == ErrorCode.PERMISSION_DENIED
    assert "127.0.0.1 is a loopback address" in str(refused.value)
    assert f"manifest.http_allow_hosts=127.0.0.1:{served.httpd.server_port}" in str(refused.value)
    assert source_version(f"{served.url}/v.mp4", {"http_allow_hosts": ()})["source_size"] is None
    assert served.requests == 0


def test_a_redirect_to_an_address_not_listed_is_refused(served):
    redirecting = Redirecting(f"{served.url}/v.mp4")
    try:
        with pytest.raises(VideoError) as refused:
            decode(f"{redirecting.url}/v.mp4", (f"127.0.0.1:{redirecting.httpd.server_port}",))
    finally:
        redirecting.stop()
    assert refused.value.code == ErrorCode.PERMISSION_DENIED
    assert f"http_allow_hosts=127.0.0.1:{served.httpd.server_port}" in str(refused.value)
    assert served.requests == 0


def test_listed_hosts_are_read_redirects_included(served):
    assert decode(f"{served.url}/v.mp4", ("127.0.0.1",)).clips.shape[:2] == (1, 4)
    redirecting = Redirecting(f"{served.url}/v.mp4")
    try:
        ports = (redirecting.httpd.server_port, served.httpd.server_port)
        allowed = tuple(f"127.0.0.1:{port}" for port in ports)
        assert decode(f"{redirecting.url}/v.mp4", allowed).clips.shape[:2] == (1, 4)
    finally:
        redirecting.stop()
    assert served.requests > 0
