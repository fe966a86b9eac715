"""SIGINT, SIGTERM and SIGHUP stop a command by raising `Interrupted` in its main thread (exit code
128 + the signal's number); a signal the process was started ignoring stays ignored; the
processes an embedded Ray starts are spared the signals sent to the command's process group; a
run's time limit stops it as they do (exit code 124)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vivit_batch import interrupts
from vivit_batch.errors import Interrupted, TimeLimitReached
from vivit_batch.interrupts import (
    deferred,
    handlers_kept,
    signals_interrupting,
    time_left,
    time_limited,
)


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


def test_the_same_stop_signalled_twice_stops_once_and_a_later_signal_again(monkeypatch):
    """`timeout` signals the command and then its group; a wrapper passes on what the group had
    too: within SAME_STOP_S of the first, a signal is that stop again and raises nothing (it
    would give up the run's last file). One after it is a second stop."""
    monkeypatch.setattr(interrupts, "SAME_STOP_S", 0.5)
    with handlers_kept():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with signals_interrupting():
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.6)
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGTERM)


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


class SignalledInDel:
    """Sends `number` to this process from its `__del__`, whose next line runs the handler."""

    def __init__(self, number: int):
        self.number = number

    def __del__(self):
        os.kill(os.getpid(), self.number)
        time.sleep(0.01)


def test_a_stop_raised_where_python_ignores_exceptions_lands_after_it():
    """A signal handled in a `__del__` (or a weakref callback, a callback after fork) raises
    where Python prints "Exception ignored in" and goes on: the stop is signalled again, and
    stops the command in the code that follows."""
    steps = []
    with handlers_kept():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(Interrupted) as stopped, signals_interrupting():
            SignalledInDel(signal.SIGTERM)  # collected at once
            steps.append("after the __del__")
            time.sleep(1)
            steps.append("went on")
    assert steps == ["after the __del__"] and stopped.value.signal == signal.SIGTERM


def test_a_time_limit_interrupts_a_wait_and_leaves_no_timer_behind():
    """`run.time_limit_s` stops a run that waits (on a batch, a hung video) when it passes, as
    SIGTERM would, but names itself and exits with 124, as `timeout` does."""
    handler = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(TimeLimitReached) as stopped, signals_interrupting(), time_limited(0.3):
        assert 0.2 < time_left() <= 0.3
        time.sleep(30)
    assert 0.3 <= time.monotonic() - started < 5
    assert stopped.value.exit_code == 124 and stopped.value.by == "run.time_limit_s"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is handler


def test_a_time_limit_that_passes_in_a_commit_stops_the_run_after_it():
    steps = []
    with pytest.raises(TimeLimitReached), signals_interrupting(), time_limited(0.1):
        with deferred():
            time.sleep(0.3)
            steps.append("committed")
        steps.append("next commit")
    assert steps == ["committed"]


def test_a_run_done_within_its_time_limit_is_not_stopped_after_it():
    with signals_interrupting(), time_limited(0.2):
        pass
    time.sleep(0.3)  # SIGALRM's default action would end the process
    with signals_interrupting(), time_limited(None):
        assert time_left() is None


SPARED_SCRIPT = """
import json, os, signal, subprocess
from pathlib import Path
from vivit_batch.interrupts import spared_group_signals
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a foreground command starts (not under nohup)
group = os.getpgrp()
with spared_group_signals():
    child = subprocess.Popen(["sleep", "30"])
status = Path(f"/proc/{child.pid}/status").read_text()
ignored = int(status.split("SigIgn:")[1].split()[0], 16)
print(json.dumps({"pid": os.getpid(), "before": group, "after": os.getpgrp(),
                  "child": os.getpgid(child.pid), "child_ignores_sighup": bool(ignored & 1),
                  "sighup_after": int(signal.getsignal(signal.SIGHUP))}))
child.kill()
"""


@pytest.mark.parametrize("leads_its_group", [False, True], ids=["member", "leader"])
def test_processes_started_in_the_block_are_spared_the_commands_group_signals(leads_its_group):
    """As `timeout` (the group's leader) starts the command: a process started in the block is
    in a group apart, and the command back in its own. A command that leads its group (a
    shell's job) cannot leave it and come back: there the child shares its group. Either way
    the child ignores SIGHUP, and the command's own handling of it is as before."""
    result = subprocess.run(
        [sys.executable, "-c", SPARED_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        process_group=0 if leads_its_group else None,
    )
    spared = json.loads(result.stdout)
    assert spared["after"] == spared["before"]
    if leads_its_group:
        assert spared["child"] == spared["before"] == spared["pid"]
    else:
        assert spared["child"] == spared["pid"] != spared["before"]
    assert spared["child_ignores_sighup"]
    assert spared["sighup_after"] == signal.SIG_DFL
