"""Decoding in a child process that can be killed: a hung or crashing decoder costs one video.

PyAV cannot be interrupted from Python while FFmpeg blocks (a stalled pipe or network read, a
decoder that loops), and a segfault or abort in FFmpeg ends the process it runs in. So
`IsolatedDecoder` runs `decode_video` in a long-lived worker process, reused from video to video:
a request goes down a pipe, the clips come back as raw bytes. The parent waits with a hard
deadline (the soft one inside `decode_video` stays the first line); a worker that misses it is
killed and replaced, and the video is a `timeout`. A worker that dies is replaced and the video
retried up to `crash_retries` times, then it is a `decode_crash`.

Workers are forked from a zygote: a process started once per `IsolatedDecoder` that imports PyAV,
numpy and torch (seconds) and then only forks, single-threaded, so a replacement is ready in
milliseconds. Each worker's memory is capped (RLIMIT_DATA): a video that needs more fails inside
it (`too_large`, or `decode_crash` when the decoder dies of it) instead of bringing the OOM killer
to the actor. A worker that a video leaves holding more than half the cap is replaced, so
fragmentation left by large videos cannot build up to it. Zygote and workers exit when the
process that started them does.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection

import numpy as np

from vivit_batch.processor import ProcessorConfig
from vivit_batch.video.decode import DecodedVideo, DecodeLimits, decode_video
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.sampling import SamplingConfig

DEFAULT_MAX_MEMORY_BYTES = 4 * 2**30
"""An 8K H.264 clip peaks near 0.9 GiB with 4 decoder threads (0.25 GiB of it imports)."""
KILL_GRACE_S = 3.0
"""The hard deadline is the soft one plus this, so a video that merely runs long gets the soft
deadline's error and keeps its worker."""
STARTUP_TIMEOUT_S = 180.0
"""Most the zygote may take to import PyAV, numpy and torch and say it is ready."""
_CONTROL_TIMEOUT_S = 60.0
"""Most the zygote may take to fork a worker or report one's exit."""
_REAP_WAIT_S = 10.0
_STILL_RUNNING = -(2**31)
_PIPE_BYTES = 2**20
"""Pipe buffer asked for (Linux), so a clip crosses in a few writes rather than 64 KiB ones."""
_F_SETPIPE_SZ = 1031


class DecoderProcessError(RuntimeError):
    """The decoding processes could not be started, or failed outside any one video."""


class IsolatedDecoder:
    """`decode_video` in a killable worker process; `decode` takes the same arguments.

    One decode at a time (not thread-safe). `close()` (or garbage collection) ends the
    processes.
    """

    def __init__(
        self,
        *,
        crash_retries: int = 1,
        max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ):
        self.crash_retries = crash_retries
        self.max_memory_bytes = max_memory_bytes
        self.startup_timeout_s = startup_timeout_s
        self._processes = _Processes(max_memory_bytes)
        self._finalizer = weakref.finalize(self, self._processes.close)

    @property
    def restarts(self) -> int:
        """Workers replaced so far (after timeouts, deaths, or to free memory)."""
        return self._processes.replaced

    @property
    def child_pid(self) -> int | None:
        """The worker process's pid, once one has started (it changes when one is replaced)."""
        worker = self._processes.worker
        return worker.pid if worker else None

    def decode(
        self,
        uri: str,
        sampling: SamplingConfig,
        processor: ProcessorConfig,
        *,
        video_id: str = "",
        limits: DecodeLimits = DecodeLimits(),  # noqa: B008 (frozen, so sharing it is safe)
        threads: int = 1,
        storage_options: dict | None = None,
    ) -> DecodedVideo:
        """What `decode_video` returns or raises, plus `timeout` and `decode_crash` errors."""
        request = pickle.dumps(
            (uri, sampling, processor, video_id, limits, threads, storage_options),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        deadline = None if limits.timeout_s is None else limits.timeout_s + KILL_GRACE_S
        deaths: list[str] = []
        while True:
            worker = self._processes.ready_worker(self.startup_timeout_s)
            try:
                reply = worker.ask(request, deadline)
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
            except _Died:
                deaths.append(self._processes.end_worker())
                if len(deaths) > self.crash_retries:
                    raise VideoError(
                        ErrorCode.DECODE_CRASH,
                        uri,
                        f"the decoding process died on each of {len(deaths)} attempts "
                        f"({'; '.join(deaths)}); the file likely crashes the decoder (FFmpeg)",
                    ) from None
                continue
            if self.max_memory_bytes and reply.rss_bytes > self.max_memory_bytes // 2:
                self._processes.end_worker()
            return reply.result()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Stuck(Exception):
    pass


class _Died(Exception):
    pass


class _Processes:
    """The zygote and its current worker (either may be None, to be started when needed)."""

    def __init__(self, max_memory_bytes: int | None):
        self.max_memory_bytes = max_memory_bytes
        self.zygote: _Zygote | None = _Zygote(max_memory_bytes)
        self.worker: _Worker | None = None
        self.replaced = 0
        self.closed = False

    def ready_worker(self, startup_timeout_s: float) -> _Worker:
        if self.closed:
            raise DecoderProcessError("this IsolatedDecoder is closed")
        if self.worker and self.worker.died_while_idle():  # not the next video's fault
            self.end_worker()
        for attempt in range(2):  # a zygote that died is restarted once
            if self.worker:
                return self.worker
            if self.zygote is None:
                self.zygote = _Zygote(self.max_memory_bytes)
            try:
                self.zygote.wait_ready(startup_timeout_s)
                self.worker = self.zygote.fork()
            except _ZygoteGone as gone:
                self.zygote.stop()
                self.zygote = None
                if attempt:
                    raise DecoderProcessError(f"the decoding processes failed: {gone}") from None
        return self.worker

    def end_worker(self) -> str:
        """Kill the worker (the next request forks another); how it ended."""
        worker, self.worker = self.worker, None
        self.replaced += 1
        worker.kill()
        try:
            code = self.zygote.reap(worker.pid)
        except _ZygoteGone:
            self.zygote.stop()
            self.zygote = None
            return "its zygote process ended too"
        if code == _STILL_RUNNING:
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

    def __init__(self, max_memory_bytes: int | None):
        ours, theirs = socket.socketpair()
        command = (
            "from vivit_batch.video.isolation import zygote_main; "
            f"zygote_main({theirs.fileno()}, {os.getpid()}, {max_memory_bytes or 0})"
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", command],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_zygote_environment(),
            )
        finally:
            theirs.close()
        self.control = ours
        self.ready = False

    def wait_ready(self, timeout: float) -> None:
        if not self.ready:
            self._receive(1, timeout)
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
        self.requests = Connection(request_fd, readable=False)
        self.replies = Connection(reply_fd, writable=False)

    def died_while_idle(self) -> bool:
        return self.replies.poll(0)  # nothing is due: readable means the pipe's end

    def ask(self, request: bytes, deadline: float | None) -> _Reply:
        try:
            self.requests.send_bytes(request)
            if not self.replies.poll(deadline):
                raise _Stuck()
            outcome = pickle.loads(self.replies.recv_bytes())
            clips = None
            if outcome[0] == "ok":
                clips = np.empty(outcome[2], np.uint8)
                _receive_into(self.replies.fileno(), clips)
            return _Reply(outcome, clips)
        except (EOFError, OSError) as error:
            raise _Died() from error

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.requests.close()
        self.replies.close()


class _Reply:
    def __init__(self, outcome: tuple, clips: np.ndarray | None):
        self.kind, self.value, self.rss_bytes = outcome[0], outcome[1], outcome[-1]
        self.clips = clips

    def result(self) -> DecodedVideo:
        if self.kind == "ok":
            return DecodedVideo(self.clips, self.value)
        if self.kind == "error":
            raise self.value
        error, child_traceback = self.value
        raise error from DecoderProcessError(f"raised in the decoding process:\n{child_traceback}")


def _zygote_environment() -> dict[str, str]:
    """The parent's environment, with its import path (a Ray working_dir, say) made explicit
    and OpenBLAS kept from starting threads at import, so that the zygote forks with one."""
    paths = os.pathsep.join(p for p in sys.path if p)
    return {**os.environ, "PYTHONPATH": paths, "OPENBLAS_NUM_THREADS": "1"}


def _receive_into(fd: int, array: np.ndarray) -> None:
    """Read exactly the array's bytes from the pipe, straight into it."""
    view = memoryview(array).cast("B")
    done = 0
    while done < len(view):
        count = os.readv(fd, [view[done:]])
        if not count:
            raise EOFError("the decoding process closed the pipe midway through a clip")
        done += count


def _send_all(fd: int, array: np.ndarray) -> None:
    view = memoryview(array).cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


# The zygote and the workers.


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
    return exited.pop(pid, _STILL_RUNNING)


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
        reply, clips = _decode_request(pickle.loads(request), max_memory_bytes)
        replies.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        if clips is not None:
            _send_all(reply_fd, clips)
        del reply, clips


def _decode_request(request: tuple, max_memory_bytes: int) -> tuple[tuple, np.ndarray | None]:
    """(reply, clips to send after it) for one request."""
    uri, sampling, processor, video_id, limits, threads, options = request
    try:
        video = decode_video(
            uri,
            sampling,
            processor,
            video_id=video_id,
            limits=limits,
            threads=threads,
            storage_options=options,
        )
    except VideoError as error:
        if isinstance(error.__cause__, MemoryError):
            error = _out_of_memory(uri, max_memory_bytes)
        return ("error", error, _rss_bytes()), None
    except MemoryError:
        return ("error", _out_of_memory(uri, max_memory_bytes), _rss_bytes()), None
    except Exception as error:  # a bug: the parent raises it, as decode_video would
        return ("raised", (_picklable(error), traceback.format_exc()), _rss_bytes()), None
    clips = np.ascontiguousarray(video.clips)
    return ("ok", video.metadata, clips.shape, _rss_bytes()), clips


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
