"""The decoding processes' side of `isolation`: the zygote, the workers, and what they say.

The zygote (`zygote_main`) imports PyAV, numpy and torch once, prepares the sandbox
(`sandbox`), then forks a worker per request of the parent's `IsolatedDecoder` and reports their
exits. A worker (`serve`) enters the sandbox, then decodes one `DecodeRequest` at a time from its
request pipe and answers on its reply pipe with a `Decoded` (followed by the clips' raw bytes) or
a `Failed`; a segments request with a `Chunk` (and its clips) per chunk of segments, the last one
carrying the metadata, or a `Failed` at any point. A `Decoded` or `Chunk` says the worker's CPU
seconds on the request so far (`cpu_s`, what `calibration` measures decoding by). The video's
bytes it asks the parent for (`served`). Both exit when the process above them does.

Replies are data, never pickles: a JSON header (`encode_reply`) after its length
(`HEADER_LENGTH`, at most `MAX_HEADER_BYTES`), which the parent checks field by field
(`parse_reply`) before it believes any of it, then the clips' raw uint8 bytes. A decoder exploit
in the worker can send the parent wrong pixels or a malformed reply (the worker is then treated
as crashed), not code to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pickle
import resource
import signal
import socket
import struct
import threading
import time
import traceback
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from vivit_batch.video.decode import DecodeRequest, Opener, VideoMetadata
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.nvdec import decode_on_device
from vivit_batch.video.sandbox import Sandbox, SandboxUnavailable, probe, readable_roots
from vivit_batch.video.segments import decode_segments
from vivit_batch.video.served import SourceRequest, parse_answer, served_opener

STILL_RUNNING = -(2**31)
"""What `reap` answers for a worker that did not end."""
_REAP_WAIT_S = 10.0
_PIPE_BYTES = 2**20
"""Pipe buffer asked for (Linux), so a clip crosses in a few writes rather than 64 KiB ones."""
_F_SETPIPE_SZ = 1031
HEADER_LENGTH = struct.Struct("<I")
"""What precedes a reply's header on the pipe: its length in bytes."""
MAX_HEADER_BYTES = 16 * 2**20
"""Most bytes of a reply's header the parent reads (a larger one is a malformed reply). The
largest a worker sends, a chunk of segments' bounds, takes about 45 bytes per segment."""
TEST_FAULTS = "VIVIT_BATCH_TEST_DECODE_FAULTS"
"""Test builds only, never set in production: `fault:name,fault:name,...` in the environment of
the process that starts an `IsolatedDecoder` makes its workers misbehave on each video whose URI
ends with `name`, so that tests can show each fault costs that video one error row: `raise` (an
exception while decoding), `partial_reply` (a reply cut short, then silence), `oversized_reply`
(a header longer than `MAX_HEADER_BYTES`, then silence)."""
TEST_PROBE = "VIVIT_BATCH_TEST_SANDBOX_PROBE"
"""Test builds only, never set in production: present in the environment of the process that
starts an `IsolatedDecoder`, its workers run a request whose URI starts with `PROBE_URI` as a
probe of their sandbox instead of decoding (`sandbox_probe`), and answer what it found as the
message of a `RuntimeError`. Without it at the zygote's start such a URI is only a bad path."""
PROBE_URI = "vivit-sandbox-probe:"


class DecoderProcessError(RuntimeError):
    """The decoding processes could not be started, or failed outside any one video."""


@dataclass
class Decoded:
    """A decoded video: its clips' bytes follow this reply on the pipe."""

    metadata: VideoMetadata
    shape: tuple[int, ...]
    rss_bytes: int
    """the worker's resident memory after the video"""
    cpu_s: float = 0.0
    """the worker's CPU seconds on the request (`calibration` measures decoding by them)"""


@dataclass
class Chunk:
    """A chunk of a video's segments (see `segments`): their clips' bytes follow on the pipe."""

    first_index: int
    bounds_s: list[list[float]]
    shape: tuple[int, ...]
    rss_bytes: int
    metadata: VideoMetadata | None = None
    """on the video's last chunk"""
    cpu_s: float = 0.0
    """the worker's CPU seconds on the request so far"""


@dataclass
class Failed:
    """`decode_video` raised `error`: a `VideoError`, or (with `traceback`) a bug, which the
    parent raises as `decode_video` would have."""

    error: Exception
    rss_bytes: int
    traceback: str | None = None


class MalformedReply(Exception):
    """A reply that is not what a worker sends: the parent treats the worker as crashed."""


_MESSAGE_CHARS = 4000
"""Most characters of a message or traceback a reply may carry."""
_RAISED_AS_THEMSELVES = {
    error.__name__: error
    for error in (ValueError, TypeError, KeyError, IndexError, RuntimeError, AssertionError)
}
"""Bugs in the worker that the parent raises as their own type (others: DecoderProcessError)."""


def encode_reply(reply: Decoded | Chunk | Failed) -> bytes:
    header: dict[str, object]
    if isinstance(reply, Decoded):
        header = {
            "kind": "decoded",
            "metadata": dataclasses.asdict(reply.metadata),
            "shape": list(reply.shape),
            "cpu_s": reply.cpu_s,
        }
    elif isinstance(reply, Chunk):
        metadata = reply.metadata
        header = {
            "kind": "chunk",
            "first_index": reply.first_index,
            "bounds_s": reply.bounds_s,
            "shape": list(reply.shape),
            "metadata": None if metadata is None else dataclasses.asdict(metadata),
            "cpu_s": reply.cpu_s,
        }
    elif isinstance(reply.error, VideoError):
        header = {
            "kind": "video_error",
            "code": str(reply.error.code),
            "detail": reply.error.detail,
        }
    else:
        header = {
            "kind": "bug",
            "type": type(reply.error).__name__,
            "message": str(reply.error)[:_MESSAGE_CHARS],
            "traceback": (reply.traceback or "")[-_MESSAGE_CHARS:],
        }
    return json.dumps({**header, "rss_bytes": reply.rss_bytes}).encode()


Reply = Decoded | Chunk | Failed


def parse_reply(data: bytes, uri: str, max_clip_bytes: int) -> Reply | SourceRequest:
    """The reply `encode_reply` made or the `SourceRequest` a worker asks, checked:
    `MalformedReply` for anything else (a pickle, a field of the wrong type, clips larger than
    `max_clip_bytes`). Errors name `uri`, the request's, whatever the reply says."""
    try:
        header = json.loads(data)
        if header["kind"] == "source":
            return SourceRequest.parse(header)
        kind, rss_bytes = header["kind"], _count(header["rss_bytes"])
        if kind == "decoded":
            shape = _clips_shape(header["shape"], 5, max_clip_bytes)
            return Decoded(
                _metadata(header["metadata"]), shape, rss_bytes, _seconds(header["cpu_s"])
            )
        if kind == "chunk":
            shape = _clips_shape(header["shape"], 6, max_clip_bytes)
            bounds = _bounds(header["bounds_s"], shape[0])
            metadata = header["metadata"]
            return Chunk(
                _count(header["first_index"]),
                bounds,
                shape,
                rss_bytes,
                None if metadata is None else _metadata(metadata),
                _seconds(header["cpu_s"]),
            )
        if kind == "video_error":
            detail = _text(header["detail"])
            return Failed(VideoError(ErrorCode(header["code"]), uri, detail), rss_bytes)
        if kind == "bug":
            raised = _RAISED_AS_THEMSELVES.get(_text(header["type"]))
            message = _text(header["message"])
            error = (
                raised(message)
                if raised
                else DecoderProcessError(f"{_text(header['type'])}: {message}")
            )
            return Failed(error, rss_bytes, _text(header["traceback"]))
    except (ValueError, KeyError, TypeError) as error:  # JSON, a missing key, an unknown code
        raise MalformedReply(f"{type(error).__name__}: {str(error)[:200]}") from None
    raise MalformedReply(f"unknown kind of reply {str(kind)[:40]!r}")


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedReply(f"{str(value)[:40]!r} where a count belongs")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
        raise MalformedReply(f"{str(value)[:40]!r} where seconds belong")
    return float(value)


def _clips_shape(value: object, dimensions: int, max_clip_bytes: int) -> tuple[int, ...]:
    """The shape of uint8 RGB clips: `dimensions` counts, the last 3, at most `max_clip_bytes`."""
    if not isinstance(value, list):
        raise MalformedReply(f"{str(value)[:40]!r} where a shape belongs")
    shape = tuple(_count(n) for n in value)
    if len(shape) != dimensions or shape[-1] != 3 or math.prod(shape) > max_clip_bytes:
        raise MalformedReply(f"clips of shape {shape[: dimensions + 1]}")
    return shape


def _bounds(value: object, count: int) -> list[list[float]]:
    """`count` (start, end) pairs of seconds."""
    if not isinstance(value, list) or len(value) != count:
        raise MalformedReply(f"bounds for {count} segments expected")
    for pair in value:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
        ):
            raise MalformedReply(f"{str(pair)[:40]!r} where a segment's bounds belong")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedReply(f"{str(value)[:40]!r} where text belongs")
    return value[:_MESSAGE_CHARS]


@functools.cache
def _metadata_types() -> dict[str, tuple[type, ...]]:
    """Each `VideoMetadata` field's accepted types (an int where a float belongs too)."""
    accepted = {}
    for name, hint in typing.get_type_hints(VideoMetadata).items():
        types = typing.get_args(hint) or (hint,)
        accepted[name] = types + (int,) if float in types else types
    return accepted


def _metadata(fields: object) -> VideoMetadata:
    """`VideoMetadata` from its fields, each of its declared type."""
    accepted = _metadata_types()
    if not isinstance(fields, dict) or set(fields) != set(accepted):
        raise MalformedReply("metadata without exactly the VideoMetadata fields")
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, accepted[name]):
            raise MalformedReply(f"metadata {name}={str(value)[:40]!r}")
        if isinstance(value, str):
            fields[name] = value[:200]
    return VideoMetadata(**fields)


def zygote_main(
    control_fd: int, parent_pid: int, max_memory_bytes: int, sandbox: str, gpu: bool = False
) -> None:
    """Fork workers on request until the parent closes the socket or dies, then exit. The ready
    message says which sandbox the workers enter (`sandbox`: a `decode.sandbox` mode; `gpu`:
    workers that decode on NVDEC, which initialise CUDA themselves after the fork)."""
    import torch  # for the resize: imported once, before the zygote forks

    # torch's resize runs on its intra-op pool, one thread per core unless told otherwise: on
    # two cores that doubled the CPU seconds of a 480p clip (0.25 against 0.11).
    torch.set_num_threads(1)
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file per crash and retry
    worker = _WorkerSetup(
        max_memory_bytes, *_prepared_sandbox(sandbox, gpu), TEST_PROBE in os.environ
    )
    ready = json.dumps({"sandbox": worker.described, "missing": worker.missing}).encode()
    try:
        control.sendall(b"R" + HEADER_LENGTH.pack(len(ready)) + ready)
        _fork_on_request(control, parent_pid, worker)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone (a run stopped as it started): nobody to tell
    os._exit(0)  # nothing to clean up; tearing down torch & co. takes seconds


def _fork_on_request(control: socket.socket, parent_pid: int, worker: _WorkerSetup) -> None:
    """Fork a worker or reap one, as the parent asks, until it closes the socket or dies."""
    exited: dict[int, int] = {}
    while True:
        command = _receive_command(control)
        if command is None or os.getppid() != parent_pid:
            return
        kind, pid = command
        if kind == b"F":
            pid, fds = _fork_worker(control, worker)
            socket.send_fds(control, [struct.pack("<i", pid)], fds)
            for fd in fds:
                os.close(fd)
        else:
            control.sendall(struct.pack("<i", _reap(pid, exited)))


@dataclass(frozen=True)
class _WorkerSetup:
    """What every worker the zygote forks starts with."""

    max_memory_bytes: int
    sandbox: Sandbox | None
    described: str
    """the sandbox in words: `off`, `none` or what it enforces (`Support.describe`)"""
    missing: str | None
    """why there is none where one was asked for"""
    probes: bool
    """runs `PROBE_URI` requests (`TEST_PROBE`)"""


def _prepared_sandbox(mode: str, gpu: bool) -> tuple[Sandbox | None, str, str | None]:
    """The sandbox for `decode.sandbox=mode` (`gpu`: for NVDEC's workers, seccomp alone), tried
    once in a process of its own, how it is described, and why there is none (None when there
    is one or none was asked for)."""
    if mode == "off":
        return None, "off", None
    support = probe()
    missing = support.lacks(landlock=not gpu)
    if missing:
        return None, "none", f"this kernel has no {missing}"
    try:
        sandbox = Sandbox(support, () if gpu else readable_roots(), landlock=not gpu)
        _try_entering(sandbox)
    except OSError as error:
        return None, "none", f"the sandbox could not be entered ({error})"
    return sandbox, support.describe(landlock=not gpu), None


def _try_entering(sandbox: Sandbox) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sandbox.enter()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SandboxUnavailable("a process could not enter it")


def _receive_command(control: socket.socket) -> tuple[bytes, int] | None:
    data = b""
    while len(data) < 5:
        chunk = control.recv(5 - len(data))
        if not chunk:
            return None
        data += chunk
    return data[:1], struct.unpack("<i", data[1:])[0]


def _reap(pid: int, exited: dict[int, int]) -> int:
    """`pid`'s exit code, waiting for it a while; reaps any other finished worker on the way."""
    end = time.monotonic() + _REAP_WAIT_S
    while pid not in exited and time.monotonic() < end:
        try:
            found, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if found:
            exited[found] = os.waitstatus_to_exitcode(status)
        else:
            time.sleep(0.005)
    return exited.pop(pid, STILL_RUNNING)


def _fork_worker(control: socket.socket, setup: _WorkerSetup) -> tuple[int, list[int]]:
    """Fork a worker; its pid and the parent's ends of its request and reply pipes."""
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    with contextlib.suppress(OSError):  # a smaller pipe only means more, smaller writes
        import fcntl

        fcntl.fcntl(reply_write, _F_SETPIPE_SZ, _PIPE_BYTES)
        fcntl.fcntl(request_write, _F_SETPIPE_SZ, _PIPE_BYTES)  # video bytes, read for it
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            control.close()
            os.close(request_write)
            os.close(reply_read)
            _serve(request_read, reply_write, setup)
            code = 0
        finally:
            os._exit(code)
    os.close(request_read)
    os.close(reply_write)
    return pid, [request_write, reply_read]


def _serve(request_fd: int, reply_fd: int, setup: _WorkerSetup) -> None:
    """A worker: decode each request until the request pipe closes or the zygote ends."""
    requests = Connection(request_fd, writable=False)
    max_memory_bytes = setup.max_memory_bytes
    if max_memory_bytes:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            max_memory_bytes = min(max_memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (max_memory_bytes, hard))
    global _STATM_FD
    _STATM_FD = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)  # before the sandbox
    if setup.sandbox:
        setup.sandbox.enter()  # before any thread: it confines the calling thread only
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    opener = served_opener(functools.partial(_ask_parent, reply_fd, requests))
    while True:
        try:
            request = requests.recv_bytes()
        except (EOFError, OSError):
            return
        request = pickle.loads(request)  # the parent's
        fault = injected_fault(request.uri)
        if fault in ("partial_reply", "oversized_reply"):
            _send_faulty_reply(reply_fd, fault)
        for reply, clips in _replies(request, max_memory_bytes, opener, setup.probes):
            header = encode_reply(reply)
            _send_all(reply_fd, memoryview(HEADER_LENGTH.pack(len(header)) + header))
            if clips is not None:
                _send_all(reply_fd, clips.data.cast("B"))
            del reply, clips


def _ask_parent(reply_fd: int, requests: Connection, question: SourceRequest) -> tuple[int, bytes]:
    """Ask the parent about the video's bytes (see `served`); its answer."""
    header = json.dumps(question.header()).encode()
    _send_all(reply_fd, memoryview(HEADER_LENGTH.pack(len(header)) + header))
    return parse_answer(requests.recv_bytes())


def _replies(
    request: DecodeRequest, max_memory_bytes: int, opener: Opener, probes: bool
) -> Iterator[tuple[Decoded | Chunk | Failed, np.ndarray | None]]:
    """The replies to one request, each with the clips to send after it."""
    started = time.process_time()
    try:
        if injected_fault(request.uri) == "raise":
            raise RuntimeError(f"a fault injected by {TEST_FAULTS}")
        if probes and request.uri.startswith(PROBE_URI):
            raise RuntimeError(json.dumps(sandbox_probe(json.loads(request.uri[len(PROBE_URI) :]))))
        if request.sampling.segments:
            for chunk in decode_segments(request, opener):
                clips = np.ascontiguousarray(chunk.clips)
                bounds = chunk.bounds_s.tolist()
                cpu_s = time.process_time() - started
                chunk_reply = Chunk(
                    chunk.first_index, bounds, clips.shape, _rss_bytes(), chunk.metadata, cpu_s
                )
                yield chunk_reply, clips
            return
        video = decode_on_device(request, opener)
    except VideoError as error:
        if isinstance(error.__cause__, MemoryError):
            error = _out_of_memory(request.uri, max_memory_bytes)
        yield Failed(error, _rss_bytes()), None
        return
    except MemoryError:
        yield Failed(_out_of_memory(request.uri, max_memory_bytes), _rss_bytes()), None
        return
    except Exception as error:  # a bug: the parent raises it, as decode_video would
        yield Failed(error, _rss_bytes(), traceback.format_exc()), None
        return
    clips = np.ascontiguousarray(video.clips)
    yield Decoded(video.metadata, clips.shape, _rss_bytes(), time.process_time() - started), clips


def _out_of_memory(uri: str, max_memory_bytes: int) -> VideoError:
    return VideoError(
        ErrorCode.TOO_LARGE,
        uri,
        f"decoding it needs more memory than the decode.max_memory_bytes cap of "
        f"{max_memory_bytes}; raise the cap (or lower decode.max_pixels) to keep such videos out",
    )


_STATM_FD = -1
"""The worker's /proc/self/statm, opened before its sandbox (which denies /proc)."""


def _rss_bytes() -> int:
    return int(os.pread(_STATM_FD, 200, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _exit_with_parent(parent_pid: int) -> None:
    """Exit once the zygote is gone (this process re-parented), even mid-decode."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _send_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


def injected_fault(uri: str) -> str | None:
    """The fault `TEST_FAULTS` injects for `uri` (test builds only), if any."""
    for entry in os.environ.get(TEST_FAULTS, "").split(","):
        fault, _, name = entry.partition(":")
        if name and uri.endswith(name):
            return fault
    return None


def _send_faulty_reply(reply_fd: int, fault: str) -> None:
    """Start the reply `fault` names, then hang until the parent kills this worker."""
    if fault == "partial_reply":
        _send_all(reply_fd, memoryview(HEADER_LENGTH.pack(100) + b'{"kind": "dec'))
    else:
        _send_all(reply_fd, memoryview(HEADER_LENGTH.pack(MAX_HEADER_BYTES + 1)))
    threading.Event().wait()


def sandbox_probe(spec: dict) -> dict[str, object]:
    """Test builds only (`TEST_PROBE`): what this process can do of what `spec` lists: `read`
    and `create` (paths), `connect` ([host, port]); each outcome "ok" or the error's type, and
    the names in the environment."""
    outcomes: dict[str, object] = {"environment": sorted(os.environ)}

    def attempt(name: str, action: typing.Callable[[], object]) -> None:
        try:
            action()
            outcomes[name] = "ok"
        except OSError as error:
            outcomes[name] = type(error).__name__

    for index, path in enumerate(spec.get("read", [])):
        attempt(f"read {index}", functools.partial(_open_and_close, path, "rb"))
    for index, path in enumerate(spec.get("create", [])):
        attempt(f"create {index}", functools.partial(_open_and_close, path, "xb"))
    if "connect" in spec:
        address = tuple(spec["connect"])
        attempt("connect", lambda: socket.create_connection(address, timeout=5).close())
    return outcomes


def _open_and_close(path: str, mode: str) -> None:
    open(path, mode).close()  # noqa: SIM115
