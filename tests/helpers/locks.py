"""Lock scenarios the lock, lock-command and crash tests share: stores that answer late or fail,
local and S3 backends, lock records of other holders, processes frozen inside a commit."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.s3 import FaultyProxy, S3Server
from vivit_batch.config import StorageSection
from vivit_batch.output import Output, OutputLock
from vivit_batch.output.lock import ProcessIdentity
from vivit_batch.storage import storage_options

ROOT = Path(__file__).resolve().parents[2]

STALE = 1.0
"""The holders' stale period in these tests (s): they renew every quarter of it."""

LATE = 1.2
"""How late a delayed writer's writes land: past the 1 s that the old lock waited."""


class Delayed:
    """A local record store whose changes are made `delay_s` after they are asked for."""

    def __init__(self, store, delay_s: float):
        self.store, self.delay_s = store, delay_s

    def read(self):
        return self.store.read()

    def create(self, record):
        time.sleep(self.delay_s)
        return self.store.create(record)

    def replace(self, record, version):
        time.sleep(self.delay_s)
        return self.store.replace(record, version)

    def guarded(self, exclusive=False):
        return self.store.guarded(exclusive)

    @property
    def commits_under_guard(self):
        return self.store.commits_under_guard


class Failing(Delayed):
    """Its first `failures` replaces raise `OSError` (the store could not be reached);
    `paused` holds every change until it is set."""

    def __init__(self, store, failures: int = 0):
        super().__init__(store, 0.0)
        self.failures = failures
        self.paused = threading.Event()
        self.paused.set()

    def replace(self, record, version):
        self.paused.wait()
        if self.failures:
            self.failures -= 1
            raise OSError("injected: the store did not answer")
        return self.store.replace(record, version)


@dataclass
class Backend:
    kind: str
    root: str
    server: S3Server | None = None

    def output(self, name: str, endpoint: str | None = None) -> Output:
        if self.server is None:
            return Output(f"{self.root}/{name}")
        options = storage_options(StorageSection(endpoint_url=endpoint or self.server.endpoint_url))
        return Output(f"{self.root}/{name}", options)

    def lock(self, name: str, run_id: str, stale_after_s: float = STALE, **options) -> OutputLock:
        return self.output(name).lock(run_id, stale_after_s, **options)

    def late_lock(self, name: str, run_id: str, proxy: FaultyProxy | None) -> OutputLock:
        """A lock whose writes land `LATE` s after they are sent."""
        if proxy is None:
            lock = self.lock(name, run_id)
            lock.store = Delayed(lock.store, LATE)
            return lock
        return self.output(name, proxy.endpoint_url).lock(run_id, STALE)

    def proxy(self, **faults) -> FaultyProxy | None:
        """A faulty proxy before the S3 server for PUTs to `_lock.json` (None locally)."""
        if self.server is None:
            return None
        return FaultyProxy(self.server.port, slow_key="_lock.json", **faults)


def record_of(output: Output) -> dict:
    return output.lock("reader", STALE).store.read().record


def another_holder(**fields) -> dict:
    """A lock record as a run on another machine writes it."""
    return {
        "state": "held",
        "run_id": "other-run",
        "generation": 1,
        "beat": 0,
        "stale_after_s": STALE,
        "host": "elsewhere",
        "pid": 1,
        "pid_start": "1",
        "boot_id": "another-machine",
        "pid_namespace": "pid:[1]",
        "write_id": uuid.uuid4().hex,
        **fields,
    }


def gone_holder_here(pid_namespace: str | None) -> dict:
    """The lock record of a process that has ended, under this machine's name and boot id."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = ProcessIdentity.current()
    return another_holder(
        stale_after_s=30,
        host=me.host,  # hostNetwork pods share the node's name
        pid=gone.pid,
        boot_id=me.boot_id,
        pid_namespace=pid_namespace,
    )


FROZEN_COMMITTER = """
import os, signal, sys
from vivit_batch.output import Output

output = Output(sys.argv[1])
lock = output.lock("frozen", 1.0)
lock.acquire()
staged = output.stage(b"committed before the takeover", "frozen", "late.txt")
with lock.fenced():
    print("frozen", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    os.replace(staged, output.path("late.txt"))
    os._exit(0)  # dies holding the lock: only a takeover frees it
"""

FROZEN_TAKER = """
import fcntl, os, signal, sys

guard = os.open(sys.argv[1] + "/_lock.guard", os.O_RDWR | os.O_CREAT)
fcntl.flock(guard, fcntl.LOCK_EX)  # as a run replacing the record does
print("frozen", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


@contextlib.contextmanager
def frozen_process(script: str, output: Output) -> Iterator[subprocess.Popen]:
    """`script` run on `output` until it stops itself (SIGSTOP) where it says "frozen"; killed
    after the block."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, output.uri], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert process.stdout.readline().strip() == "frozen"
        while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)
        yield process
    finally:
        process.kill()
        process.wait()
