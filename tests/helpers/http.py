"""HTTP servers on 127.0.0.1 (a free port) that serve from a thread, for tests of http URIs: a
base class, one that stalls midway through a file, one that never answers, and one that crashes
its clients."""

from __future__ import annotations

import functools
import http.server
import io
import os
import signal
import socket
import threading
import time
from pathlib import Path


class LocalHTTPServer:
    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.host = f"127.0.0.1:{self.httpd.server_port}"
        """for manifest.http_allow_hosts"""

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Serves `data` (set by the server) whole to HEAD and GET, without logging."""

    data = b""

    def do_HEAD(self):
        self.send_headers()

    def do_GET(self):
        self.send_headers()
        self.wfile.write(self.data)

    def send_headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.send_header("Content-Type", "video/mp4")
        self.end_headers()

    def log_message(self, *args):
        pass


class StallingServer(LocalHTTPServer):
    """Announces a file, sends the start of it (2000 bytes) on each GET, and then nothing more
    until it is stopped: its clients' reads block with the connection open."""

    def __init__(self, data: bytes):
        release = self.release = threading.Event()

        class Handler(QuietHandler):
            def do_GET(self):
                self.send_headers()
                self.wfile.write(self.data[:2000])
                self.wfile.flush()
                release.wait()

        Handler.data = data
        super().__init__(Handler)
        self.url += "/stalls.mp4"

    def stop(self) -> None:
        self.release.set()
        super().stop()


class SilentServer:
    """Accepts connections and never answers on them (not even headers) until it is stopped."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold_each, daemon=True).start()
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.url = f"http://{self.host}/silent.mp4"

    def _hold_each(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:  # stopped
                return

    def stop(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


class CrashingServer(LocalHTTPServer):
    """Sends SIGSEGV to the process that decodes what each reader asks it for (the first
    `kills` of them; later ones get `data`, as HEAD requests always do): a decoder crash on a
    poison file, the process found from outside through /proc (client port -> socket inode ->
    reader -> its decoding worker, `decoders_of`), with no hook in the code under test. The
    decoder dies midway through opening the video, waiting for its first bytes."""

    def __init__(self, kills: int | None = None, data: bytes = b""):
        self.kills = kills
        self.killed: list[int] = []
        lock, server = threading.Lock(), self

        class Handler(QuietHandler):
            def do_GET(self):
                with lock:
                    if server.kills is None or len(server.killed) < server.kills:
                        readers = processes_connected(self.client_address[1], self.server)
                        # a reader may retry the request of a decoder killed already
                        clients = [p for p in decoders_of(readers) if p not in server.killed]
                        for pid in clients:
                            os.kill(pid, signal.SIGSEGV)
                        server.killed += clients
                    else:
                        clients = []
                if clients:
                    wait_until_dead(clients)  # before the connection closes under them
                else:
                    super().do_GET()

        Handler.data = data
        super().__init__(Handler)
        self.url += "/poison.mp4"


def processes_connected(client_port: int, server: http.server.HTTPServer) -> list[int]:
    """Pids of the processes holding the client's end of a connection to `server` on
    127.0.0.1 (local port `client_port`)."""
    # /proc/net/tcp's addresses: 127.0.0.1 as little-endian hex, then the port in hex
    ends = (f"0100007F:{client_port:04X}", f"0100007F:{server.server_port:04X}")
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == ends:
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                found.append(pid)
        except OSError:  # gone, or not ours to look into
            continue
    return found


def decoders_of(readers: list[int]) -> list[int]:
    """The processes that decode what `readers` read: a reader's decoding workers (the
    children of its zygote: decoders read through their actor) where it has them, else the
    reader itself, unless that is this process (a test reading for its own decoder)."""
    children: dict[int, list[int]] = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(pid)
    found = []
    for reader in readers:
        workers = [w for zygote in children.get(reader, []) for w in children.get(zygote, [])]
        found += workers or ([reader] if reader != os.getpid() else [])
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_dead(pids: list[int], timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and any(map(alive, pids)):
        time.sleep(0.01)


class FileServer(LocalHTTPServer):
    """Serves a directory over HTTP (with ranges, as fsspec asks for), in a thread."""

    def __init__(self, directory: Path):
        super().__init__(functools.partial(RangeHandler, directory=str(directory)))


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        spec = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not spec or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        first, _, last = spec.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])

    def log_message(self, *args):
        pass


LOCAL_HTTP = {"http_allow_hosts": ("127.0.0.1",)}
"""The storage options that let sources reach the test's servers on 127.0.0.1."""
