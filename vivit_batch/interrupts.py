"""How a command stops on a signal: SIGINT (Ctrl-C), SIGTERM (`timeout`, `ray job stop`, a
scheduler) and SIGHUP (its terminal closed) raise `Interrupted` in the main thread, at once
(not after the batch in flight, nor after a video that hangs), except inside a `deferred()`
block, a commit, which ends whole first: what the run says it committed is what it did."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from vivit_batch.errors import Interrupted

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Deferral:
    """The main thread's `deferred()` block (it alone runs signal handlers and commits)."""

    active = False
    pending: int | None = None
    """the last signal that came inside it"""


_deferral = _Deferral()


@contextlib.contextmanager
def handlers_kept() -> Iterator[None]:
    """The `STOPPING` signals' handlers after the block as before it (`ray.init` sets one of its
    own for SIGTERM, which exits with status 15). In the main thread only, where Python runs
    signal handlers and lets them be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOPPING}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set outside Python, left as it is
                signal.signal(number, handler)


@contextlib.contextmanager
def signals_interrupting() -> Iterator[None]:
    """`STOPPING` signals raise `Interrupted` in the block. A signal the process was started
    ignoring stays ignored (a shell starts background jobs ignoring SIGINT, `nohup` its command
    ignoring SIGHUP)."""
    with handlers_kept():
        if threading.current_thread() is threading.main_thread():
            for number in STOPPING:
                if signal.getsignal(number) is not signal.SIG_IGN:
                    signal.signal(number, _stop)
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that comes in the block raises `Interrupted` as the block ends (it ends whole:
    a commit and its count)."""
    _deferral.active = True
    try:
        yield
    finally:
        _deferral.active = False
        pending, _deferral.pending = _deferral.pending, None  # or lost to the block's own error
    if pending is not None:
        raise Interrupted(pending)


def _stop(signum: int, frame: object) -> None:
    if _deferral.active:
        _deferral.pending = signum
        return
    raise Interrupted(signum)
