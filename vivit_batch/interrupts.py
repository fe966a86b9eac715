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
    """The main thread's `deferred()` blocks (it alone runs signal handlers)."""

    depth = 0
    pending: int | None = None
    """the last signal that came inside them"""


_deferral = _Deferral()


@contextlib.contextmanager
def signals_interrupting() -> Iterator[None]:
    """`STOPPING` signals raise `Interrupted` in the block. A signal the process was started
    ignoring stays ignored (a shell starts background jobs ignoring SIGINT, `nohup` its command
    ignoring SIGHUP). In the main thread only, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOPPING}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that comes in the block raises `Interrupted` as the block ends (it ends whole:
    a commit and its count)."""
    _deferral.depth += 1
    try:
        yield
    finally:
        _deferral.depth -= 1
        pending = None if _deferral.depth else _deferral.pending
        if not _deferral.depth:
            _deferral.pending = None  # raised below, or lost to the block's own error
    if pending is not None:
        raise Interrupted(pending)


def _stop(signum: int, frame: object) -> None:
    if _deferral.depth:
        _deferral.pending = signum
        return
    raise Interrupted(signum)
