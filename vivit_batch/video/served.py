"""Video bytes the actor reads for its decoding worker: the worker opens nothing itself.

A worker decoding a video asks for its bytes the way PyAV asks a file: `open` (the answer is the
size, -1 when unknown), `seek(offset, whence)` (the new position) and `read(size)` (at most
`MAX_READ_BYTES` bytes, fewer at the end). Each question is a reply header on the reply pipe
(`{"kind": "source", ...}`, checked like any reply); each answer a message on the request pipe:
`ANSWER` (ok or failed, and the size or position), then the bytes read. The actor (`SourceServer`)
opens the video through `storage.open_input` with the request's storage options and stall
timeout, as the worker did before, within the hard deadline of the reply it is waiting for.

A failed open, seek or read is answered `failed` without a word: the actor keeps the exception
and, when the worker then reports a `storage_error`, makes the row from it (`SourceServer.error`),
so the row is what decoding in the actor would have written.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from vivit_batch.storage import InputFile, is_local, open_input
from vivit_batch.video.decode import DecodeRequest

MAX_READ_BYTES = 16 * 2**20
"""Most bytes one read answers (PyAV reads 32 KiB at a time, a demuxer a large packet at once:
fewer bytes than asked is a short read, which FFmpeg reads on from)."""
ANSWER = struct.Struct("<Bq")
"""What starts each answer: 0 (ok) or 1 (failed), then the size or position."""
_OK, _FAILED = 0, 1
_OPERATIONS = ("open", "read", "seek")
_MAX_OFFSET = 2**62

T = TypeVar("T")


@dataclass(frozen=True)
class SourceRequest:
    """A worker's question about its video's bytes."""

    operation: str
    size: int = 0
    offset: int = 0
    whence: int = os.SEEK_SET

    def header(self) -> dict:
        return {"kind": "source", **vars(self)}

    @classmethod
    def parse(cls, header: dict) -> SourceRequest:
        """The request a worker's header asks for; `ValueError` for anything else."""
        operation, size, offset, whence = (
            header["operation"],
            header["size"],
            header["offset"],
            header["whence"],
        )
        if operation not in _OPERATIONS or whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError(f"source request {str(operation)[:20]!r} whence {str(whence)[:20]}")
        for value in (size, offset):
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) > _MAX_OFFSET:
                raise ValueError(f"{str(value)[:40]!r} where an offset or size belongs")
        return cls(operation, max(0, min(size, MAX_READ_BYTES)), offset, whence)


class SourceFailed(OSError):
    """The actor could not open, seek or read the video (it holds the reason)."""

    def __init__(self) -> None:
        super().__init__("reading the source failed in the decode actor")


class ServedFile:
    """The worker's file object for PyAV: each call a question to the actor (`ask`)."""

    def __init__(self, ask: Callable[[SourceRequest], tuple[int, bytes]]):
        self._ask = ask
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        size = MAX_READ_BYTES if size < 0 else min(size, MAX_READ_BYTES)
        _, data = self._ask(SourceRequest("read", size=size))
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position, _ = self._ask(SourceRequest("seek", offset=offset, whence=whence))
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        pass  # the actor closes the source after the reply


def served_opener(
    ask: Callable[[SourceRequest], tuple[int, bytes]],
) -> Callable[[DecodeRequest], InputFile]:
    """What the worker's `decode_video` opens sources with."""

    def open_served(request: DecodeRequest) -> InputFile:
        size, _ = ask(SourceRequest("open"))
        served = typing.cast(BinaryIO, ServedFile(ask))  # what PyAV calls of a file
        return InputFile(served, None if size < 0 else size)

    return open_served


def parse_answer(message: bytes) -> tuple[int, bytes]:
    """The value and the bytes of an answer (from the actor: trusted); `SourceFailed`."""
    status, value = ANSWER.unpack_from(message)
    if status != _OK:
        raise SourceFailed()
    return value, message[ANSWER.size :]


class SourceOverdue(Exception):
    """A remote read did not return before the reply's hard deadline."""


class SourceServer:
    """The actor's side for one attempt at one video: its source, opened when the worker asks;
    `error`, the first exception opening, seeking or reading it raised."""

    def __init__(self, request: DecodeRequest):
        self.request = request
        self.error: Exception | None = None
        self._source: InputFile | None = None
        self._calls = _InlineCalls() if is_local(request.uri) else _ThreadCalls()

    def answer(self, question: SourceRequest, end: float | None) -> bytes:
        """The answer message to `question`, by `end` (monotonic seconds) or `SourceOverdue`."""
        try:
            value, data = self._calls.call(lambda: self._do(question), end)
        except SourceOverdue:
            raise
        except Exception as error:  # noqa: BLE001 (kept for the row; see the module's doc)
            self.error = self.error or error
            return ANSWER.pack(_FAILED, 0)
        return ANSWER.pack(_OK, value) + data

    def bytes_fetched(self) -> int:
        return self._source.bytes_fetched() if self._source else 0

    def close(self) -> None:
        source, self._source = self._source, None
        self._calls.finish(source.close if source else None)

    def _do(self, question: SourceRequest) -> tuple[int, bytes]:
        if question.operation == "open":
            self._reopen()
            assert self._source is not None
            size = self._source.size
            return (-1 if size is None else size), b""
        if self._source is None:
            raise ValueError(f"a {question.operation} before the source was opened")
        if question.operation == "seek":
            return self._source.seek(question.offset, question.whence), b""
        return 0, self._source.read(question.size)

    def _reopen(self) -> None:
        if self._source:
            self._source.close()
        request = self.request
        self._source = open_input(
            request.uri,
            request.storage_options,
            stall_timeout_s=request.config.stall_timeout_s,
        )


class _InlineCalls:
    """Local files: read in the actor's thread (a regular file's read does not stall)."""

    def call(self, function: Callable[[], T], end: float | None) -> T:
        return function()

    def finish(self, last: Callable[[], None] | None) -> None:
        if last:
            last()


class _ThreadCalls:
    """Remote sources: each call on a thread of its own, waited for until the deadline, so a
    source that trickles bytes cannot hold the actor past the video's hard deadline (the
    thread, abandoned then, ends with the read's stall timeout)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, function: Callable[[], T], end: float | None) -> T:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="source-read")
            self._thread.start()
        self._calls.put(function)
        timeout = None if end is None else max(0.0, end - time.monotonic())
        try:
            succeeded, value = self._results.get(timeout=timeout)
        except queue.Empty:
            raise SourceOverdue() from None
        if succeeded:
            return value
        raise value

    def finish(self, last: Callable[[], None] | None) -> None:
        """Run `last` after any call still under way, then end the thread."""
        if self._thread is None:
            if last:
                last()
            return
        if last:
            self._calls.put(last)
        self._calls.put(None)

    def _run(self) -> None:
        while (function := self._calls.get()) is not None:
            try:
                self._results.put((True, function()))
            except Exception as error:  # noqa: BLE001 (raised in the caller's thread)
                self._results.put((False, error))
