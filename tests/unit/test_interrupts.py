"""SIGINT, SIGTERM and SIGHUP stop a command by raising `Interrupted` in its main thread (exit code
128 + the signal's number); a signal the process was started ignoring stays ignored."""

from __future__ import annotations

import os
import signal

import pytest

from vivit_batch.cli import signals_interrupting
from vivit_batch.errors import Interrupted


@pytest.mark.parametrize(
    ("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_in_the_block_raises_interrupted_with_its_exit_code(number, code):
    before = signal.getsignal(number)
    with pytest.raises(Interrupted) as stopped, signals_interrupting():
        os.kill(os.getpid(), number)
    assert stopped.value.signal == number and stopped.value.exit_code == code
    assert signal.getsignal(number) is before


def test_a_signal_started_ignored_stays_ignored():
    """A shell starts background jobs (`cmd &`, cron's) ignoring SIGINT."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_interrupting():
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
