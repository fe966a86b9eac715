"""What the tool writes while it works: one line per event with its time (UTC) and level, for
people (`text`) or one JSON object per line for log collectors (`json`); and, when nobody watches
a terminal, a periodic progress line instead of Ray Data's progress bars.

    2026-11-30T02:15:04Z INFO run 20261130T021502Z-3fa1c2: 1200 videos; ...
    {"time": "2026-11-30T02:15:04Z", "level": "INFO", "logger": "vivit_batch", "message": "..."}
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from vivit_batch.errors import UsageError
from vivit_batch.interrupts import STOPPING

LOG_FORMATS = ("text", "json")
RAY_LOGGERS = ("ray", "ray.data")
"""Loggers that Ray gives console handlers of its own (its format, not ours)."""
DROPPED = (
    "Progress bars disabled",
    "Exception occurred in Ray Data or Ray Core internal code",
)
"""Library lines about what this tool chose on purpose. A stage's error reaches the driver as
itself (`run.configure_ray_data`), which Ray Data takes for an error of its own, and it asks
for an issue on Ray's tracker: the error and its traceback follow either way."""
NOTICES = (
    "Token authentication is enabled for this Ray cluster",
    "Specifying both num_cpus and num_gpus for map tasks is experimental",
)
"""Library warnings which a run cannot act on: shown with -v. Ray 2.59+ turns token
authentication on for the local cluster it starts, and says so; Ray Data calls a GPU pool's
CPU share experimental (`resources`: each GPU actor's host work needs one)."""

NATIVE_NOTICES = (
    "has constructor arguments in the object store and max_restarts > 0",
    "The actor is dead because it was killed by `ray.kill`",
)
"""Lines that Ray writes straight to this process's stderr about Ray's own choices: Ray Data's
actor pools put their constructor arguments in the object store themselves
(ray-project/ray#57733), and, where a run ends early, Ray Data kills its actors, which the
raylet reports as task submissions that failed and will be retried. Shown with -v; Ray's
session logs keep them either way."""

log = logging.getLogger("vivit_batch")


def setup_logging(log_format: str = "text", verbose: bool = False) -> None:
    """Every line through one handler on stderr, in `log_format`; other libraries' lines (Ray's
    start-up, Ray Data's plans, the storage libraries) only from WARNING up unless `verbose`."""
    handler = CurrentStderr()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(LibraryLines(verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    adopt_ray_loggers()


def adopt_ray_loggers() -> None:
    """Send Ray's and Ray Data's lines through our handler instead of their own console handlers
    (Ray Data's log file keeps its own). Call it again after `import ray.data` and `ray.init`,
    which install theirs."""
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [
            handler
            for handler in logger.handlers
            if isinstance(handler, logging.FileHandler)
            or not isinstance(handler, logging.StreamHandler)
        ]
        logger.propagate = True


class LibraryLines(logging.Filter):
    """This tool's lines, and other libraries' from WARNING up (all of them when `verbose`)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log.name or record.name.startswith(log.name + "."):
            return True
        if any(text in str(record.msg) for text in DROPPED) or refused(record):
            return False
        if self.verbose:
            return True
        return record.levelno >= logging.WARNING and not any(
            text in str(record.msg) for text in NOTICES
        )


def refused(record: logging.LogRecord) -> bool:
    """Whether the record is a library's account of a refusal (Ray Data logs a stage's error
    with its traceback before the run ends): the command says it in one line of its own."""
    return isinstance(record.exc_info and record.exc_info[1], UsageError)


class CurrentStderr(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a line is written (pytest swaps it per test)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def utc_time(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)  # the message, and the traceback if there is one
        return f"{utc_time(record)} {record.levelname} {text}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def interactive() -> bool:
    """Whether a person watches this run in a terminal (Ray Data's progress bars are for them)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def progress_lines(
    total: int,
    done: Callable[[], tuple[int, int, int, int]],
    every_s: float,
    time_left: Callable[[], float | None],
) -> Iterator[None]:
    """Log a progress line every `every_s` seconds while the block runs. `done()` returns
    (videos labelled, videos committed, clips labelled, error rows) so far; `total` is the
    videos the run labels; `time_left()`, the seconds before its time limit stops it (None:
    none)."""
    started = time.monotonic()
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every_s):
            elapsed_s = time.monotonic() - started
            line, fields = progress_line(total, *done(), elapsed_s, time_left())
            log.info(line, extra={"fields": fields})

    thread = threading.Thread(target=report, name="vivit-batch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def progress_line(
    total: int,
    videos: int,
    committed: int,
    clips: int,
    errors: int,
    elapsed_s: float,
    time_left_s: float | None = None,
) -> tuple[str, dict]:
    """'progress: 120/1200 videos labelled (10.0%), 96 committed, 31.5 clips/s, ETA 9m 40s,
    3 errors' and its fields. Labelled: out of the pipeline, in the driver; committed: in the
    output (`output.commit_every_s` and `rows_per_file` set how far behind it is). Where the
    run's time limit (`time_left_s` away) comes first, the ETA says so: 'ETA 9h 40m (the time
    limit stops it in 2h 10m)'."""
    clips_per_s = clips / elapsed_s if elapsed_s > 0 else 0.0
    rate = videos / elapsed_s if elapsed_s > 0 else 0.0
    eta_s = (total - videos) / rate if rate > 0 else None
    share = f" ({videos / total:.1%})" if total else ""
    eta = duration(eta_s) if eta_s is not None else "unknown"
    if time_left_s is not None and (eta_s is None or eta_s > time_left_s):
        eta += f" (the time limit stops it in {duration(time_left_s)})"
    line = (
        f"progress: {videos}/{total} videos labelled{share}, {committed} committed, "
        f"{clips_per_s:.1f} clips/s, ETA {eta}, {errors} error{'s' if errors != 1 else ''}"
    )
    fields = {
        "progress": {
            "videos_labelled": videos,
            "videos_committed": committed,
            "videos_total": total,
            "clips_per_second": round(clips_per_s, 2),
            "eta_seconds": round(eta_s, 1) if eta_s is not None else None,
            "time_limit_in_seconds": round(time_left_s, 1) if time_left_s is not None else None,
            "errors": errors,
        }
    }
    return line, fields


def duration(seconds: float) -> str:
    """'2h 05m', '9m 40s', '12s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


NATIVE_FILTER = """
import signal, sys
for number in sys.argv[1].split(","):  # the stop signals
    signal.signal(int(number), signal.SIG_IGN)  # it ends with its input, after the last line
notices = [notice.encode() for notice in sys.argv[2:]]
for line in sys.stdin.buffer:
    if not any(notice in line for notice in notices):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""
_forwarders: list[subprocess.Popen] = []


def filter_native_stderr() -> None:
    """Drop `NATIVE_NOTICES` from what this process writes to its stderr (file descriptor 2,
    where Ray's C++ core worker writes its ERROR lines, past Python's logging). A small child
    process forwards every other line, in order, until the last writer is gone, so nothing is
    lost if this process dies; when it exits, it waits for the forwarder to write the last
    line (whoever waits for this process then finds the whole log). Once per process; not
    where something (pytest) has replaced `sys.stderr`."""
    stderr = sys.__stderr__
    if _forwarders or stderr is None or sys.stderr is not stderr:
        return
    stderr.flush()
    real_stderr = os.dup(2)
    stop_signals = ",".join(str(int(number)) for number in STOPPING)
    forwarder = subprocess.Popen(
        [sys.executable, "-S", "-c", NATIVE_FILTER, stop_signals, *NATIVE_NOTICES],
        stdin=subprocess.PIPE,
        stdout=real_stderr,
        start_new_session=True,  # a Ctrl-C to the run does not cut its last lines short
    )
    assert forwarder.stdin is not None
    os.dup2(forwarder.stdin.fileno(), 2)
    forwarder.stdin.close()
    _forwarders.append(forwarder)
    atexit.register(_drain, forwarder, real_stderr)


def _drain(forwarder: subprocess.Popen, real_stderr: int) -> None:
    """At exit (after Ray's shutdown: registered before `ray.init`), give file descriptor 2
    back to the real stderr, which closes the forwarder's last writer, and let it finish."""
    if sys.__stderr__ is not None:
        sys.__stderr__.flush()
    os.dup2(real_stderr, 2)
    os.close(real_stderr)
    # A process this one started may still hold the pipe: it forwards as they write.
    with suppress(subprocess.TimeoutExpired):
        forwarder.wait(timeout=FORWARDER_DRAIN_S)


FORWARDER_DRAIN_S = 5.0
