"""How a command stops on a signal: SIGINT (Ctrl-C), SIGTERM (`timeout`, `ray job stop`, a
scheduler) and SIGHUP (its terminal closed) raise `Interrupted` in the main thread, at once
(not after the batch in flight, nor after a video that hangs), except inside a `deferred()`
block, a commit, which ends whole first: what the run says it committed is what it did. The
same stop signalled twice (`SAME_STOP_S`) stops it once. A signal to the command's whole
process group stops the run, not the embedded Ray it commits with (`spared_group_signals`).
A run's time limit stops it the same way (`time_limited`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from vivit_batch.errors import Interrupted, TimeLimitReached

log = logging.getLogger("vivit_batch")

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

SAME_STOP_S = 2.0
"""Signals within this many seconds of the first are that stop again, not a second one: one
stop often comes twice (`timeout` signals the command and then its group; a wrapper such as
`uv run` passes on the signal that the group had too, some milliseconds later)."""


REDELIVER_S = 0.05
"""How long after a stop is lost where Python ignores exceptions it is signalled again."""


class _Stops:
    """The main thread's stop signals (it alone runs signal handlers and commits)."""

    first_at: float | None = None
    """when the first came (`time.monotonic`)"""
    deferring = False
    """in a `deferred()` block"""
    pending: int | None = None
    """the last signal that came inside it"""


_stops = _Stops()


@contextlib.contextmanager
def handlers_kept(numbers: tuple[int, ...] = STOPPING) -> Iterator[None]:
    """The handlers of the signals `numbers` after the block as before it (`ray.init` sets one
    of its own for SIGTERM, which exits with status 15). In the main thread only, where Python
    runs signal handlers and lets them be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set outside Python, left as it is
                signal.signal(number, handler)


@contextlib.contextmanager
def signals_interrupting() -> Iterator[None]:
    """`STOPPING` signals raise `Interrupted` in the block; those within `SAME_STOP_S` of the
    first are ignored. A signal the process was started ignoring stays ignored (a shell starts
    background jobs ignoring SIGINT, `nohup` its command ignoring SIGHUP)."""
    with handlers_kept(), _stops_redelivered():
        if threading.current_thread() is threading.main_thread():
            _stops.first_at = None
            for number in STOPPING:
                if signal.getsignal(number) is not signal.SIG_IGN:
                    signal.signal(number, _stop)
        yield


@contextlib.contextmanager
def _stops_redelivered() -> Iterator[None]:
    """A stop raised where Python ignores exceptions (a signal handled in a `__del__`, a weakref
    callback, a callback after `fork`: it prints "Exception ignored in") is signalled again,
    `REDELIVER_S` later (from a thread: raised at once, it would land in the hook, ignored
    too), to land in the code that follows. Without this a time limit could be lost for good."""
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            _stops.first_at = None  # that stop never reached the command
            again = threading.Timer(REDELIVER_S, resend, (unraisable.exc_value.signal,))
            again.daemon = True
            again.start()
        else:
            previous(unraisable)

    def resend(signum: int) -> None:
        if sys.unraisablehook is hook:  # the command has not finished meanwhile
            os.kill(os.getpid(), signum)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that comes in the block raises `Interrupted` as the block ends (it ends whole:
    a commit and its count)."""
    _stops.deferring = True
    try:
        yield
    finally:
        _stops.deferring = False
        pending, _stops.pending = _stops.pending, None  # or lost to the block's own error
    if pending is not None:
        raise _stopped_by(pending)


@contextlib.contextmanager
def time_limited(seconds: float | None) -> Iterator[None]:
    """`TimeLimitReached` raised in the block once `seconds` have passed (None: never), as a
    stop signal raises `Interrupted`: at once, or as a `deferred()` block ends; within
    `SAME_STOP_S` of a stop signal it is that stop. It comes as SIGALRM (a timer of the
    kernel's, so that it interrupts a wait as a signal would). In the main thread only."""
    if seconds is None:
        yield
        return
    with handlers_kept((signal.SIGALRM,)):
        signal.signal(signal.SIGALRM, _stop)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # before SIGALRM's own handler is back


def time_left() -> float | None:
    """Seconds before the time limit of the `time_limited` block under way stops it (None where
    none is set, or it has passed)."""
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    return remaining or None


def _stop(signum: int, frame: object) -> None:
    now = time.monotonic()
    if _stops.first_at is None:
        _stops.first_at = now
    elif now - _stops.first_at < SAME_STOP_S:
        return
    if _stops.deferring:
        _stops.pending = signum
        return
    raise _stopped_by(signum)


def _stopped_by(signum: int) -> Interrupted:
    return TimeLimitReached() if signum == signal.SIGALRM else Interrupted(signum)


@contextlib.contextmanager
def spared_group_signals() -> Iterator[None]:
    """The processes started in the block (an embedded Ray's GCS, raylet and agents) spared the
    signals sent to the command's whole process group, which would end them before the
    command's last commit (the raylet exited at once and could take the command with it,
    nothing committed nor reported). They end with the command all the same (Ray's fate
    sharing). In the main thread only.

    - They start in a process group apart: `timeout` as its time runs out, or a scheduler's
      kill of the group, reaches the command and not them. This process returns to its own
      group after the block. Not where it leads its group (a shell's job): it could not leave
      the group and come back.
    - They start ignoring SIGHUP, which a terminal's hang-up sends the group. (SIGINT, Ctrl-C's,
      Ray's processes block themselves.)
    """
    group = os.getpgrp()
    apart = group != os.getpid()
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if apart:
        os.setpgid(0, 0)
    try:
        yield
    finally:
        if hangup is not None:  # None: set outside Python, where Python cannot set it back
            signal.signal(signal.SIGHUP, hangup)
        if apart:
            return_to_group(group)


def return_to_group(group: int) -> None:
    try:
        os.setpgid(0, group)
    except OSError as error:  # every process of the group ended meanwhile
        log.warning("stays in a process group of its own: cannot return to %d (%s)", group, error)
