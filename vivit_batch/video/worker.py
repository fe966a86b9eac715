"""The decoding processes' side of `isolation`: the zygote, the workers, and what they say.

The zygote (`zygote_main`) imports PyAV, numpy and torch once, then forks a worker per request
of the parent's `IsolatedDecoder` and reports their exits. A worker (`serve`) decodes one
`DecodeRequest` at a time from its request pipe and answers on its reply pipe with a `Decoded`
(followed by the clips' raw bytes) or a `Failed`. Both exit when the process above them does.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import socket
import struct
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch  # noqa: F401  (for the resize; imported once here, before the zygote forks)

from vivit_batch.video.decode import DecodeRequest, VideoMetadata, decode_video
from vivit_batch.video.errors import ErrorCode, VideoError

STILL_RUNNING = -(2**31)
"""What `reap` answers for a worker that did not end."""
_REAP_WAIT_S = 10.0
_PIPE_BYTES = 2**20
"""Pipe buffer asked for (Linux), so a clip crosses in a few writes rather than 64 KiB ones."""
_F_SETPIPE_SZ = 1031


class DecoderProcessError(RuntimeError):
    """The decoding processes could not be started, or failed outside any one video."""


@dataclass
class Decoded:
    """A decoded video: its clips' bytes follow this reply on the pipe."""

    metadata: VideoMetadata
    shape: tuple[int, ...]
    rss_bytes: int
    """the worker's resident memory after the video"""


@dataclass
class Failed:
    """`decode_video` raised `error`: a `VideoError`, or (with `traceback`) a bug, which the
    parent raises as `decode_video` would have."""

    error: Exception
    rss_bytes: int
    traceback: str | None = None


def zygote_main(control_fd: int, parent_pid: int, max_memory_bytes: int) -> None:
    """Fork workers on request until the parent closes the socket or dies, then exit."""
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file per crash and retry
    exited: dict[int, int] = {}
    control.sendall(b"R")
    while True:
        command = _receive_command(control)
        if command is None or os.getppid() != parent_pid:
            os._exit(0)  # nothing to clean up; tearing down torch & co. takes seconds
        kind, pid = command
        if kind == b"F":
            pid, fds = _fork_worker(control, max_memory_bytes)
            socket.send_fds(control, [struct.pack("<i", pid)], fds)
            for fd in fds:
                os.close(fd)
        else:
            control.sendall(struct.pack("<i", _reap(pid, exited)))


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


def _fork_worker(control: socket.socket, max_memory_bytes: int) -> tuple[int, list[int]]:
    """Fork a worker; its pid and the parent's ends of its request and reply pipes."""
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    with contextlib.suppress(OSError):  # a smaller pipe only means more, smaller writes
        import fcntl

        fcntl.fcntl(reply_write, _F_SETPIPE_SZ, _PIPE_BYTES)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            control.close()
            os.close(request_write)
            os.close(reply_read)
            _serve(request_read, reply_write, max_memory_bytes)
            code = 0
        finally:
            os._exit(code)
    os.close(request_read)
    os.close(reply_write)
    return pid, [request_write, reply_read]


def _serve(request_fd: int, reply_fd: int, max_memory_bytes: int) -> None:
    """A worker: decode each request until the request pipe closes or the zygote ends."""
    requests = Connection(request_fd, writable=False)
    replies = Connection(reply_fd, readable=False)
    if max_memory_bytes:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            max_memory_bytes = min(max_memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (max_memory_bytes, hard))
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    while True:
        try:
            request = requests.recv_bytes()
        except (EOFError, OSError):
            return
        reply, clips = _decode(pickle.loads(request), max_memory_bytes)
        replies.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        if clips is not None:
            _send_all(reply_fd, clips)
        del reply, clips


def _decode(
    request: DecodeRequest, max_memory_bytes: int
) -> tuple[Decoded | Failed, np.ndarray | None]:
    """The reply to one request, and the clips to send after it."""
    try:
        video = decode_video(request)
    except VideoError as error:
        if isinstance(error.__cause__, MemoryError):
            error = _out_of_memory(request.uri, max_memory_bytes)
        return Failed(error, _rss_bytes()), None
    except MemoryError:
        return Failed(_out_of_memory(request.uri, max_memory_bytes), _rss_bytes()), None
    except Exception as error:  # a bug: the parent raises it, as decode_video would
        return Failed(_picklable(error), _rss_bytes(), traceback.format_exc()), None
    clips = np.ascontiguousarray(video.clips)
    return Decoded(video.metadata, clips.shape, _rss_bytes()), clips


def _out_of_memory(uri: str, max_memory_bytes: int) -> VideoError:
    return VideoError(
        ErrorCode.TOO_LARGE,
        uri,
        f"decoding it needs more memory than the decode.max_memory_bytes cap of "
        f"{max_memory_bytes}; raise the cap (or lower decode.max_pixels) to keep such videos out",
    )


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return DecoderProcessError(f"{type(error).__name__}: {error}")
    return error


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _exit_with_parent(parent_pid: int) -> None:
    """Exit once the zygote is gone (this process re-parented), even mid-decode."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def receive_into(fd: int, array: np.ndarray) -> None:
    """Read exactly the array's bytes from the pipe, straight into it."""
    view = array.data.cast("B")
    done = 0
    while done < len(view):
        count = os.readv(fd, [view[done:]])
        if not count:
            raise EOFError("the decoding process closed the pipe midway through a clip")
        done += count


def _send_all(fd: int, array: np.ndarray) -> None:
    view = array.data.cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
