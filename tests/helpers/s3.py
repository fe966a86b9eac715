"""A real S3 server for the tests (moto in server mode, its own process, on 127.0.0.1), and a
proxy in front of it that fails a share of the requests, to prove that retries lose nothing."""

from __future__ import annotations

import http.client
import itertools
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import s3fs
from moto.server import ThreadedMotoServer

from tests.conftest import free_port

# Fixed test credentials, also exported (see conftest) so Ray workers inherit them.
ACCESS_KEY = "AKIATESTVIVITBATCH01"
SECRET_KEY = "vivit-batch-secret-never-printed-8d1f0a"


@dataclass
class S3Server:
    """moto's S3 server, in this process (a thread), on 127.0.0.1: other processes (Ray's
    workers, the job's subprocesses) reach it on its port like any S3 endpoint."""

    endpoint_url: str
    server: ThreadedMotoServer

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def filesystem(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url,
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            skip_instance_cache=True,
        )

    def put_objects(self, bucket: str, keys: Iterable[str], body: bytes = b"") -> None:
        """Objects written straight into the server's store: thousands a second, where a PUT
        over HTTP takes about 6 ms (for listings of many objects)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        store = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key in keys:
            store.put_object(bucket, key, body)

    def stop(self) -> None:
        self.server.stop()


def start_moto() -> S3Server:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(f"http://127.0.0.1:{port}", server)


@dataclass
class FaultyProxy:
    """Forwards to `target`; every `every`-th request fails, alternately a 503 SlowDown and a
    connection closed without an answer (0: none fail). Keys containing one of `forbidden`
    are answered 403 AccessDenied, as a bucket policy would.

    PUTs (CopyObject included) to keys ending in `slow_key` (one suffix or several) wait
    `delay_s` before they are forwarded, unless their client has hung up meanwhile (then they
    are never applied), and the first `lost_answers` of them are forwarded and then answered
    with a dropped connection (the write happened, the client never hears of it). With
    `ignore_conditions`, If-Match and If-None-Match headers are dropped, as by a store that
    does not implement them. Every request is recorded in `requests` as (method, path with
    query)."""

    target_port: int
    every: int = 0
    forbidden: tuple[str, ...] = ()
    slow_key: str | tuple[str, ...] | None = None
    delay_s: float = 0.0
    lost_answers: int = 0
    ignore_conditions: bool = False
    port: int = field(default_factory=free_port)
    failures: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self._count = itertools.count(1)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                if any(key in self.path for key in proxy.forbidden):
                    self._answer(
                        403,
                        {"Content-Type": "application/xml"},
                        b"<Error><Code>AccessDenied</Code></Error>",
                    )
                    return
                with proxy._lock:
                    number = next(proxy._count)
                    failing = proxy.every and number % proxy.every == 0
                    proxy.failures += bool(failing)
                if failing and (number // proxy.every) % 2:
                    self._drop()
                    return
                if failing:
                    self._answer(
                        503,
                        {"Content-Type": "application/xml"},
                        b"<Error><Code>SlowDown</Code></Error>",
                    )
                    return
                headers = dict(self.headers)
                if proxy.ignore_conditions:
                    conditions = ("if-match", "if-none-match")
                    headers = {k: v for k, v in headers.items() if k.lower() not in conditions}
                slow = self._is_slow_put()
                if slow:
                    time.sleep(proxy.delay_s)
                    if self._client_hung_up():
                        return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                answer = response.read()
                if slow and self._lose_answer():
                    self._drop()
                    return
                self._answer(response.status, dict(response.getheaders()), answer)

            def _is_slow_put(self) -> bool:
                path = urlsplit(self.path).path
                return (
                    self.command == "PUT" and bool(proxy.slow_key) and path.endswith(proxy.slow_key)
                )

            def _client_hung_up(self) -> bool:
                readable, _, _ = select.select([self.connection], [], [], 0)
                try:
                    return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
                except OSError:  # reset
                    return True

            def _lose_answer(self) -> bool:
                with proxy._lock:
                    if proxy.lost_answers <= 0:
                        return False
                    proxy.lost_answers -= 1
                    proxy.failures += 1
                    return True

            def _drop(self):
                self.close_connection = True
                self.connection.shutdown(2)  # no status line at all

            def _answer(self, status, headers, body):
                self.send_response(status)
                length = str(len(body))
                for name, value in headers.items():
                    if name.lower() == "content-length" and self.command == "HEAD":
                        length = value  # HEAD tells the object's size and sends no body
                    elif name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()


def tally(requests: list[tuple[str, str]], prefix: str) -> Counter:
    """The requests `FaultyProxy` recorded for keys under `prefix` (bucket/...): ("LIST", prefix)
    per listing page, (method, key) per request on an object."""
    bucket, _, key_prefix = prefix.partition("/")
    counts: Counter = Counter()
    for method, target in requests:
        url = urlsplit(target)
        in_bucket, _, key = url.path.lstrip("/").partition("/")
        query = parse_qs(url.query)
        if in_bucket != bucket:
            continue
        if method == "GET" and not key and "list-type" in query:
            listed = query.get("prefix", [""])[0]
            if listed.startswith(key_prefix):
                counts["LIST", listed] += 1
        elif key.startswith(key_prefix):
            counts[method, key] += 1
    return counts
