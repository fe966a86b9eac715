"""SIGINT, SIGTERM and SIGHUP stop a command by raising `Interrupted` in its main thread (exit code
128 + the signal's number); a signal the process was started ignoring stays ignored."""

from __future__ import annotations

import os
import signal

import pytest

from vivit_batch.errors import Interrupted
from vivit_batch.interrupts import deferred, handlers_kept, signals_interrupting


@pytest.mark.parametrize(
    ("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_in_the_block_raises_interrupted_with_its_exit_code(number, code):
    with handlers_kept():
        # As a foreground command starts (the suite itself may run in the background, or under
        # nohup, with SIGINT or SIGHUP ignored).
        signal.signal(number, signal.SIG_DFL)
        with pytest.raises(Interrupted) as stopped, signals_interrupting():
            os.kill(os.getpid(), number)
        assert signal.getsignal(number) is signal.SIG_DFL
    assert stopped.value.signal == number and stopped.value.exit_code == code


def test_a_signal_started_ignored_stays_ignored():
    """A shell starts background jobs (`cmd &`, cron's) ignoring SIGINT."""
    with handlers_kept():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with signals_interrupting():
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_signal_in_a_deferred_block_is_raised_as_the_block_ends():
    """A commit ends whole, and is counted, before the signal stops the run."""
    steps = []
    with handlers_kept():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(Interrupted) as stopped, signals_interrupting():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("committed")
            steps.append("next commit")
    assert steps == ["committed"] and stopped.value.signal == signal.SIGTERM
