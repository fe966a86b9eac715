"""Decoding in a child process that can be killed: a hung or crashing decoder costs one video.

PyAV cannot be interrupted from Python while FFmpeg blocks (a stalled pipe or network read, a
decoder that loops), and a segfault or abort in FFmpeg ends the process it runs in. So
`IsolatedDecoder` runs `decode_video` in a long-lived worker process, reused from video to video:
a request goes down a pipe, the clips come back as raw bytes. The parent waits with a hard
deadline (the soft one inside `decode_video` stays the first line) that covers the whole reply,
its last byte included; a worker that misses it is killed and replaced, and the video is a
`timeout`. A worker that dies is replaced and the video
retried up to `crash_retries` times, then it is a `decode_crash`.

Workers are forked from a zygote: a process started once per `IsolatedDecoder` that imports PyAV,
numpy and torch (seconds) and then only forks, single-threaded, so a replacement is ready in
milliseconds. Each worker's memory is capped (RLIMIT_DATA): a video that needs more fails inside
it (`too_large`, or `decode_crash` when the decoder dies of it) instead of bringing the OOM killer
to the actor. A worker that a video leaves holding more than half the cap is replaced, so
fragmentation left by large videos cannot build up to it. Zygote and workers exit when the
process that started them does.

The workers hold nothing and reach nothing: they open no source (the parent reads the video's
bytes for them, `served`, within the reply's deadline), their environment holds no credentials
or home directory (`decoder_environment`), and with `decode.sandbox` auto or required each
enters a sandbox before it reads its first request (`sandbox`): no file but the Python
installation's to read, none to write, no sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator

import numpy as np

from vivit_batch.config import DecodeConfig
from vivit_batch.video.decode import DecodedVideo, DecodeRequest
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.sandbox import WITHOUT_LANDLOCK
from vivit_batch.video.segments import SegmentChunk
from vivit_batch.video.served import SourceOverdue, SourceRequest, SourceServer
from vivit_batch.video.worker import (
    HEADER_LENGTH,
    MAX_HEADER_BYTES,
    STILL_RUNNING,
    TEST_FAULTS,
    TEST_PROBE,
    Chunk,
    Decoded,
    DecoderProcessError,
    Failed,
    MalformedReply,
    Reply,
    parse_reply,
)

KILL_GRACE_S = 3.0
"""The hard deadline is the soft one plus this, so a video that merely runs long gets the soft
deadline's error and keeps its worker."""
STARTUP_TIMEOUT_S = 180.0
"""Most the zygote may take to import PyAV, numpy and torch and say it is ready."""
MAX_CLIP_BYTES = 2**34
"""Most bytes of clips the parent accepts from a worker without a memory cap (with one: the cap,
which the worker's clips cannot exceed)."""
_CONTROL_TIMEOUT_S = 60.0
"""Most the zygote may take to fork a worker or report one's exit."""


class IsolatedDecoder:
    """`decode_video` in a killable worker process: `decode` takes the same `DecodeRequest`.

    `config` gives the worker's memory cap (`max_memory_bytes`), the retries after a crash
    (`crash_retries`), the sandbox (`sandbox`) and the device (`device`: with `cuda` the
    workers decode on NVDEC, under seccomp alone and without the address-space cap; see
    `nvdec`); each request's own config its deadline and storage. One decode at a time (not
    thread-safe). `close()` (or garbage collection) ends the processes.
    """

    def __init__(
        self,
        config: DecodeConfig = DecodeConfig(),  # noqa: B008 (frozen: sharing it is safe)
        *,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ):
        self.crash_retries = config.crash_retries
        self.max_memory_bytes = config.max_memory_bytes
        self.startup_timeout_s = startup_timeout_s
        self._max_clip_bytes = config.max_memory_bytes or MAX_CLIP_BYTES
        self._processes = _Processes(config.max_memory_bytes, config.sandbox, config.device)
        self.worker_cpu_s = 0.0
        """The worker's CPU seconds on the latest request, as of its latest clips (what the
        worker says: a figure to plan by, never to trust with more)."""
        self._finalizer = weakref.finalize(self, self._processes.close)

    @property
    def sandbox(self) -> str | None:
        """The workers' sandbox in words (`off`, `none`, or what it enforces), once the
        decoding processes have started."""
        zygote = self._processes.zygote
        return zygote.sandbox if zygote and zygote.ready else None

    @property
    def restarts(self) -> int:
        """Workers replaced so far (after timeouts, deaths, or to free memory)."""
        return self._processes.replaced

    @property
    def child_pid(self) -> int | None:
        """The worker process's pid, once one has started (it changes when one is replaced)."""
        worker = self._processes.worker
        return worker.pid if worker else None

    def decode(self, request: DecodeRequest) -> DecodedVideo:
        """What `decode_video` returns or raises, plus `timeout` and `decode_crash` errors."""
        for reply, clips in self._replies(request):
            if isinstance(reply, Chunk):
                raise DecoderProcessError("a segments reply to a clips request")
            return _result(reply, clips)
        raise AssertionError("_replies ends with a result")

    def decode_segments(self, request: DecodeRequest) -> Iterator[SegmentChunk]:
        """What `decode_segments` yields or raises, plus `timeout` and `decode_crash` errors
        (the timeout applies to each chunk). After a crash the retry's chunks already handed on
        are skipped: decoding is deterministic, so they are the same segments."""
        delivered = 0
        for reply, clips in self._replies(request):
            if not isinstance(reply, Chunk):
                _result(reply, clips)  # raises the error (a Decoded here would be a bug)
                raise DecoderProcessError("a clips reply to a segments request")
            assert clips is not None  # they follow every Chunk
            if reply.first_index >= delivered:
                delivered = reply.first_index + len(clips)
                yield SegmentChunk(
                    reply.first_index, np.array(reply.bounds_s), clips, reply.metadata
                )

    def _replies(self, request: DecodeRequest) -> Iterator[tuple[Reply, np.ndarray | None]]:
        """The worker's replies to `request` up to its last (a `Decoded`, a `Failed` or a last
        `Chunk`); after a crash, those of the retry from its first. The worker gets the request
        without its storage options: the parent reads the video for it (`served`)."""
        uri, timeout_s = request.uri, request.config.timeout_s
        unstored = dataclasses.replace(request, storage_options=None)
        message = pickle.dumps(unstored, protocol=pickle.HIGHEST_PROTOCOL)
        deadline = None if timeout_s is None else timeout_s + KILL_GRACE_S
        deaths: list[str] = []
        self.worker_cpu_s = 0.0
        while True:
            worker = self._processes.ready_worker(self.startup_timeout_s)
            source = SourceServer(request)
            finished = False
            try:
                worker.send(message, deadline)
                while not finished:
                    reply, clips = worker.receive(deadline, uri, self._max_clip_bytes, source)
                    finished = not isinstance(reply, Chunk) or reply.metadata is not None
                    if isinstance(reply, (Decoded, Chunk)):
                        self.worker_cpu_s = reply.cpu_s
                    if finished and self._holds_too_much(reply.rss_bytes):
                        self._processes.end_worker()
                    yield _with_source_facts(reply, source), clips
                return
            except _Stuck:
                self._processes.end_worker()
                raise VideoError(
                    ErrorCode.TIMEOUT,
                    uri,
                    f"no result within {deadline:g} s (decode timeout_s plus {KILL_GRACE_S:g} "
                    "s): the decoder was stuck (a stalled stream or a decoder that does not "
                    "return) and its process was killed; raise decode.timeout_s if videos this "
                    "long or large are expected",
                ) from None
            except _Died as died:
                ended = self._processes.end_worker()
                deaths.append(f"{died}; {ended}" if str(died) else ended)
                if len(deaths) > self.crash_retries:
                    raise VideoError(
                        ErrorCode.DECODE_CRASH,
                        uri,
                        f"the decoding process died on each of {len(deaths)} attempts "
                        f"({'; '.join(deaths)}); the file likely crashes the decoder (FFmpeg)",
                    ) from None
            finally:
                source.close()
                if not finished and self._processes.worker is worker:
                    self._processes.end_worker()  # left mid-stream: its replies are unread

    def _holds_too_much(self, rss_bytes: int) -> bool:
        """Whether a worker that a video left this large is replaced, to free what memory
        fragmentation holds (more than half its cap)."""
        cap = self.max_memory_bytes
        return cap is not None and rss_bytes > cap // 2

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class DecoderUnavailable(DecoderProcessError):
    """The decoding processes cannot be started: no video's fault, so the run stops."""


class _Stuck(Exception):
    pass


class _Died(Exception):
    pass


class _Processes:
    """The zygote and its current worker (either may be None, to be started when needed)."""

    def __init__(self, max_memory_bytes: int | None, sandbox: str, device: str):
        self.max_memory_bytes = max_memory_bytes
        self.sandbox = sandbox
        self.device = device
        self.zygote: _Zygote | None = _Zygote(max_memory_bytes, sandbox, device)
        self.worker: _Worker | None = None
        self.replaced = 0
        self.closed = False

    def ready_worker(self, startup_timeout_s: float) -> _Worker:
        if self.closed:
            raise DecoderUnavailable("this IsolatedDecoder is closed")
        if self.worker and self.worker.died_while_idle():  # not the next video's fault
            self.end_worker()
        if self.worker:
            return self.worker
        restarted = False
        while True:
            zygote = self.zygote = self.zygote or _Zygote(
                self.max_memory_bytes, self.sandbox, self.device
            )
            try:
                zygote.wait_ready(startup_timeout_s)
                if self.sandbox == "required" and zygote.missing:
                    raise DecoderUnavailable(
                        f"decode.sandbox=required, and the decoding processes have no sandbox: "
                        f"{zygote.missing}"
                    )
                self.worker = zygote.fork()
                return self.worker
            except _ZygoteGone as gone:
                zygote.stop()
                self.zygote = None
                if restarted:  # a zygote that died is restarted once
                    raise DecoderUnavailable(f"the decoding processes failed: {gone}") from None
                restarted = True

    def end_worker(self) -> str:
        """Kill the worker (the next request forks another); how it ended."""
        worker, zygote, self.worker = self.worker, self.zygote, None
        assert worker is not None and zygote is not None  # a worker was forked by the zygote
        self.replaced += 1
        worker.kill()
        try:
            code = zygote.reap(worker.pid)
        except _ZygoteGone:
            zygote.stop()
            self.zygote = None
            return "its zygote process ended too"
        if code == STILL_RUNNING:
            return "did not end when killed"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def close(self) -> None:
        self.closed = True
        if self.worker:
            self.worker.kill()
        if self.zygote:
            self.zygote.stop()


class _ZygoteGone(Exception):
    pass


class _Zygote:
    """The parent's handle on the zygote: start it, have it fork a worker, reap one."""

    def __init__(self, max_memory_bytes: int | None, sandbox: str, device: str):
        ours, theirs = socket.socketpair()
        # NVDEC's workers get no address-space cap: the CUDA driver maps memory by the
        # gigabyte; the parent still replaces a worker that holds more than the cap.
        gpu = device == "cuda"
        command = (
            "from vivit_batch.video.worker import zygote_main; "
            f"zygote_main({theirs.fileno()}, {os.getpid()}, "
            f"{0 if gpu else max_memory_bytes or 0}, {sandbox!r}, {gpu})"
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", command],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=decoder_environment(),
            )
        finally:
            theirs.close()
        self.control = ours
        self.ready = False
        self.sandbox = "none"
        """the workers' sandbox in words, from the ready message"""
        self.missing: str | None = None
        """why they have none, where one was asked for"""

    def wait_ready(self, timeout: float) -> None:
        """Wait for the ready message: b"R", then the sandbox's description (JSON, after its
        length: the zygote is not sandboxed itself, and is trusted)."""
        if not self.ready:
            self._receive(1, timeout)
            (size,) = HEADER_LENGTH.unpack(self._receive(HEADER_LENGTH.size, timeout))
            ready = json.loads(self._receive(size, timeout))
            self.sandbox, self.missing = ready["sandbox"], ready["missing"]
            self.ready = True

    def fork(self) -> _Worker:
        try:
            self.control.settimeout(_CONTROL_TIMEOUT_S)
            self.control.sendall(b"F" + struct.pack("<i", 0))
            message, fds, _, _ = socket.recv_fds(self.control, 4, 2)
        except OSError as error:
            raise _ZygoteGone(f"zygote: {error}") from error
        if len(message) != 4 or len(fds) != 2:
            raise _ZygoteGone(f"the zygote process ended ({self._exit_status()})")
        return _Worker(struct.unpack("<i", message)[0], *fds)

    def reap(self, pid: int) -> int:
        """The worker's exit code (negative: the signal), once the zygote has reaped it."""
        try:
            self.control.sendall(b"W" + struct.pack("<i", pid))
        except OSError as error:
            raise _ZygoteGone(f"zygote: {error}") from error
        return struct.unpack("<i", self._receive(4, _CONTROL_TIMEOUT_S))[0]

    def stop(self) -> None:
        """Closing its socket ends the zygote (killed if still importing); a worker notices
        within a second and exits."""
        self.control.close()
        if not self.ready:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)

    def _receive(self, size: int, timeout: float) -> bytes:
        data = b""
        try:
            self.control.settimeout(timeout)
            while len(data) < size:
                chunk = self.control.recv(size - len(data))
                if not chunk:
                    raise _ZygoteGone(f"the zygote process ended ({self._exit_status()})")
                data += chunk
        except TimeoutError as error:
            raise _ZygoteGone(f"no answer from the zygote process in {timeout:g} s") from error
        except OSError as error:
            raise _ZygoteGone(f"zygote: {error}") from error
        return data

    def _exit_status(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"exit status {code}; the actor's log has its stderr"


class _Worker:
    """The parent's ends of the pipes to one worker."""

    def __init__(self, pid: int, request_fd: int, reply_fd: int):
        self.pid = pid
        self.request_fd = request_fd
        os.set_blocking(request_fd, False)
        self._requests_writable = select.poll()
        self._requests_writable.register(request_fd, select.POLLOUT)
        self.reply_fd = reply_fd
        self._replies = select.poll()
        self._replies.register(reply_fd, select.POLLIN)

    def died_while_idle(self) -> bool:
        return self._readable_within(0)  # nothing is due: readable means the pipe's end

    def send(self, request: bytes, timeout_s: float | None) -> None:
        """Send a pickled `DecodeRequest` within `timeout_s` (else `_Stuck`)."""
        self._send(request, None if timeout_s is None else time.monotonic() + timeout_s)

    def receive(
        self, timeout_s: float | None, uri: str, max_clip_bytes: int, source: SourceServer
    ) -> tuple[Reply, np.ndarray | None]:
        """The next reply, and the clips that follow a `Decoded` or a `Chunk`, all of it within
        `timeout_s` (else `_Stuck`), the worker's questions about its video answered from
        `source` on the way. A reply that is not one (`parse_reply`, a header longer than
        `MAX_HEADER_BYTES`) counts as the worker's death."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                (size,) = HEADER_LENGTH.unpack(self._read(HEADER_LENGTH.size, end))
                if size > MAX_HEADER_BYTES:
                    raise MalformedReply(f"a header of {size} bytes, above {MAX_HEADER_BYTES}")
                reply = parse_reply(self._read(size, end), uri, max_clip_bytes)
                if not isinstance(reply, SourceRequest):
                    break
                self._send(source.answer(reply, end), end)
            clips = None
            if isinstance(reply, (Decoded, Chunk)):
                clips = np.empty(reply.shape, np.uint8)
                self._read_into(clips.data.cast("B"), end)
            return reply, clips
        except SourceOverdue:
            raise _Stuck() from None
        except (EOFError, OSError) as error:
            raise _Died() from error
        except MalformedReply as error:
            raise _Died(f"it sent a reply that is not one ({error})") from None

    def _send(self, message: bytes, end: float | None) -> None:
        """Write `message` on the request pipe, framed as `Connection.send_bytes` frames it,
        by `end` (monotonic seconds): a worker that stops reading cannot block the parent."""
        view = memoryview(struct.pack("!i", len(message)) + message)
        done = 0
        try:
            while done < len(view):
                left = None if end is None else max(0.0, end - time.monotonic()) * 1000
                if not self._requests_writable.poll(left):
                    raise _Stuck()
                try:
                    done += os.write(self.request_fd, view[done:])
                except BlockingIOError:
                    continue
        except OSError as error:
            raise _Died() from error

    def _read(self, size: int, end: float | None) -> bytes:
        data = bytearray(size)
        self._read_into(memoryview(data), end)
        return bytes(data)

    def _read_into(self, view: memoryview, end: float | None) -> None:
        """Fill `view` from the reply pipe by `end` (monotonic seconds; None: no deadline)."""
        done = 0
        while done < len(view):
            left = None if end is None else end - time.monotonic()
            if not self._readable_within(left):
                raise _Stuck()
            count = os.readv(self.reply_fd, [view[done:]])
            if not count:
                raise EOFError("the decoding process closed its pipe midway through a reply")
            done += count

    def _readable_within(self, timeout_s: float | None) -> bool:
        """Whether the reply pipe has bytes (or its end) within `timeout_s` (None: waits)."""
        timeout_ms = None if timeout_s is None else max(0.0, timeout_s * 1000)
        return bool(self._replies.poll(timeout_ms))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.close(self.request_fd)
        os.close(self.reply_fd)


def _with_source_facts(reply: Reply, source: SourceServer) -> Reply:
    """`reply` with what the parent knows better: the bytes read from storage, and the error
    of a source that failed (the worker, told only that it failed, reports a storage error)."""
    metadata = reply.metadata if isinstance(reply, (Decoded, Chunk)) else None
    if metadata is not None:
        metadata.bytes_read = source.bytes_fetched()
    failed = source.error
    if (
        isinstance(reply, Failed)
        and failed is not None
        and isinstance(reply.error, VideoError)
        and reply.error.code == ErrorCode.STORAGE_ERROR
    ):
        error = failed
        if isinstance(failed, OSError):
            error = VideoError.from_storage(reply.error.uri, failed)
        return Failed(error, reply.rss_bytes)
    return reply


def _result(reply: Decoded | Failed, clips: np.ndarray | None) -> DecodedVideo:
    """What `decode_video` would have returned or raised."""
    if isinstance(reply, Decoded):
        assert clips is not None  # they follow every Decoded
        return DecodedVideo(clips, reply.metadata)
    if reply.traceback is None:
        raise reply.error
    raise reply.error from DecoderProcessError(
        f"raised in the decoding process:\n{reply.traceback}"
    )


ENVIRONMENT_KEPT = frozenset(
    {"LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    | {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}  # NVDEC's workers: the GPU Ray gave
    | {TEST_FAULTS, TEST_PROBE, WITHOUT_LANDLOCK}
)
ENVIRONMENT_PREFIXES_KEPT = ("LC_",)
"""The decoding processes open nothing (the parent reads the videos for them) and reach no
network, so they keep only what Python and FFmpeg need of the actor's environment: the locale,
the time zone, where the shared libraries are, thread counts, which GPU. No AWS_*, no HOME, no
PATH, no HF_TOKEN, no proxies, no LD_PRELOAD."""
READER_ENVIRONMENT_KEPT = (
    ENVIRONMENT_KEPT
    | {"PATH", "HOME", "USER", "TMPDIR"}
    | {
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NO_PROXY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "no_proxy",
        "http_proxy",
        "https_proxy",
    }
)
READER_ENVIRONMENT_PREFIXES_KEPT = ("LC_", "AWS_", "FSSPEC_")
"""A process that opens sources itself (the calibration's with `decode.isolation=none`) also keeps
the home directory, the proxy and CA-bundle variables, `AWS_*` (the standard credential chain)
and `FSSPEC_*`."""


def decoder_environment() -> dict[str, str]:
    """What the decoding processes need of the parent's environment (`ENVIRONMENT_KEPT`), with
    its import path (a Ray working_dir, say) made explicit and OpenBLAS kept from starting
    threads at import, so that the zygote forks with one."""
    return _environment(ENVIRONMENT_KEPT, ENVIRONMENT_PREFIXES_KEPT)


def source_reader_environment() -> dict[str, str]:
    """`decoder_environment` for a process that also opens the sources (`READER_*`)."""
    return _environment(READER_ENVIRONMENT_KEPT, READER_ENVIRONMENT_PREFIXES_KEPT)


def _environment(names: frozenset[str], prefixes: tuple[str, ...]) -> dict[str, str]:
    kept = {
        name: value
        for name, value in os.environ.items()
        if name in names or name.startswith(prefixes)
    }
    paths = os.pathsep.join(p for p in sys.path if p)
    return {**kept, "PYTHONPATH": paths, "OPENBLAS_NUM_THREADS": "1"}
