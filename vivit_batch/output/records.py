"""Small JSON records that change only by compare-and-swap: the primitive the lock is built on.

A record has a version (the S3 ETag; locally the sha256 of the file's bytes) and changes in two
ways only: `create` (only if there is none) and `replace` (only if it is still at the version
the caller read). Of two writers racing, exactly one wins; the other gets `Conflict`.

- S3: a conditional PUT (`If-None-Match: *` to create, `If-Match: <etag>` to replace). A store
  that ignores these headers would let two writers win, so `S3Record.require_conditional_writes`
  checks that the store refuses a conditional write it must refuse before the lock relies on it.
- Local disk: every change happens under an exclusive `flock` on a guard file beside the record
  (never moved or deleted), and is written to a temporary file, fsync'd and renamed into place,
  so a reader sees the old record or the new one, never a part. Commits hold the same guard
  shared (`guarded`), which is what closes the window between checking the lock and committing.
  The guard is never waited for without bound: it is tried without blocking, again every
  `GUARD_POLL_S`, for as long as `patience` says (the lock decides: see `OutputLock`), and then
  `GuardBusy` is raised, so that a process frozen while holding it (SIGSTOP, a hung disk) stops
  no one for longer than that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fsspec.asyn import sync


class Conflict(Exception):
    """The record exists (create), or is no longer at the version the caller read (replace)."""


class GuardBusy(OSError):
    """Another process held the local guard for as long as the caller could wait."""


class ConditionalWritesUnsupported(OSError):
    """The store does not honour conditional writes, so no lock on it can be trusted."""


@dataclass(frozen=True)
class Versioned:
    record: dict
    version: str


def encode(record: dict) -> bytes:
    return json.dumps(record, indent=2, sort_keys=True).encode()


def decode(data: bytes) -> dict:
    """The record, or `{}` when the bytes are not a JSON object: an unreadable record is still a
    record (it has a version and is replaced like any other), never "no record"."""
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


GUARD_POLL_S = 0.01
"""The pause between two tries for a local guard that another process holds."""


class LocalRecord:
    commits_under_guard = True
    """commits are made holding the guard shared, so no takeover falls inside one"""

    def __init__(self, path: str, guard_path: str):
        self.path = path
        self.guard_path = guard_path
        self.patience: Callable[[], float] = lambda: math.inf
        """Seconds a wait for the guard may last, asked as each wait starts; the lock using this
        record sets it (`OutputLock.guard_patience`)."""

    def read(self) -> Versioned | None:
        try:
            with open(self.path, "rb") as stream:
                data = stream.read()
        except FileNotFoundError:
            return None
        return Versioned(decode(data), hashlib.sha256(data).hexdigest())

    def create(self, record: dict) -> str:
        with self.guarded(exclusive=True):
            if os.path.exists(self.path):
                raise Conflict(self.path)
            return self._write(record)

    def replace(self, record: dict, version: str) -> str:
        with self.guarded(exclusive=True):
            current = self.read()
            if current is None or current.version != version:
                raise Conflict(self.path)
            return self._write(record)

    @contextlib.contextmanager
    def guarded(self, exclusive: bool = False) -> Iterator[None]:
        """Hold the guard: exclusively to change the record, shared to act on what it says.
        `GuardBusy` if another process holds it (the other way) for longer than `patience`."""
        descriptor = os.open(self.guard_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(descriptor)  # releases the flock

    def _flock(self, descriptor: int, mode: int) -> None:
        """`flock`, tried without blocking until it is granted or `patience` has passed (one
        try at least)."""
        started = time.monotonic()
        give_up_at = started + self.patience()
        while True:
            try:
                fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= give_up_at:
                    raise GuardBusy(
                        f"{self.guard_path} stayed locked by another process for "
                        f"{time.monotonic() - started:.1f} s"
                    ) from None
            time.sleep(GUARD_POLL_S)

    def _write(self, record: dict) -> str:
        data = encode(record)
        write_atomically(self.path, data)
        return hashlib.sha256(data).hexdigest()


def write_atomically(path: str, data: bytes) -> None:
    """Write `data` to a local `path` so that readers see the old file or the new one, whole,
    also after a power loss: temporary file, fsync, rename, fsync of the folder."""
    directory = os.path.dirname(path)
    staging = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(staging, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(staging, path)
    sync_directory(directory)


def sync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
"""412: the condition did not hold; 409: another conditional write to the key was in flight."""


class S3Record:
    """A record in an S3 object, through s3fs's client (its credentials, endpoint, retries)."""

    commits_under_guard = False

    def __init__(self, filesystem, path: str):
        self.filesystem = filesystem
        self.path = path
        self.bucket, self.key, _ = filesystem.split_path(path)

    def read(self) -> Versioned | None:
        try:
            data, etag = sync(self.filesystem.loop, self._get)
        except FileNotFoundError:
            return None
        return Versioned(decode(data), etag)

    def create(self, record: dict) -> str:
        return self._put(encode(record), IfNoneMatch="*")

    def replace(self, record: dict, version: str) -> str:
        return self._put(encode(record), IfMatch=version)

    @contextlib.contextmanager
    def guarded(self, exclusive: bool = False) -> Iterator[None]:
        """S3 has no shared guard: a commit is checked, then made (see the README)."""
        yield

    def require_conditional_writes(self) -> None:
        """Raise `ConditionalWritesUnsupported` unless the store refuses a create over an
        existing key and a replace at a wrong version, as the lock needs it to."""
        probe = f"{self.bucket}/{self.key}.probe-{uuid.uuid4().hex}"
        record = S3Record(self.filesystem, probe)
        try:
            record.create({"probe": True})
            for attempt in (
                lambda: record.create({"probe": "again"}),
                lambda: record.replace({"probe": "again"}, '"not-its-etag"'),
            ):
                try:
                    attempt()
                except Conflict:
                    continue
                raise ConditionalWritesUnsupported(
                    f"s3://{self.bucket}: the store accepted a conditional write that it must "
                    "refuse (If-None-Match / If-Match on PutObject)"
                )
        except OSError as error:
            if isinstance(error, ConditionalWritesUnsupported):
                raise
            raise ConditionalWritesUnsupported(
                f"s3://{self.bucket}: conditional writes failed ({error})"
            ) from error
        finally:
            with contextlib.suppress(OSError):
                self.filesystem.rm_file(probe)

    async def _get(self) -> tuple[bytes, str]:
        response = await self.filesystem._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        async with response["Body"] as body:
            return await body.read(), response["ETag"]

    def _put(self, data: bytes, **condition: str) -> str:
        try:
            response = self.filesystem.call_s3(
                "put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition
            )
        except OSError as error:
            if _precondition_failed(error):
                raise Conflict(self.path) from error
            raise
        return response["ETag"]


def _precondition_failed(error: OSError) -> bool:
    if isinstance(error, FileExistsError):  # s3fs's name for a failed If-None-Match
        return True
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in PRECONDITION_CODES
