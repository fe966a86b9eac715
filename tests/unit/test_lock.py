"""The output's lock, on local disk and on a real S3 server (moto): one writer however late its
writes land, renewals that survive a failure, staleness judged by the holder's own period on
the reader's own clock, and commits fenced. No Ray: these run in seconds."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.locks import (
    FROZEN_COMMITTER,
    FROZEN_TAKER,
    STALE,
    Failing,
    another_holder,
    frozen_process,
    gone_holder_here,
    record_of,
)
from vivit_batch.config import RunSection
from vivit_batch.errors import ConfigError, LockLost, OutputLocked
from vivit_batch.job.run import LOCK_LOST_SIGNAL, holding_lock
from vivit_batch.output import Output, OutputLock
from vivit_batch.output.lock import ProcessIdentity
from vivit_batch.output.records import LocalRecord

_unique = itertools.count()


def test_a_failed_renewal_is_retried_and_the_lock_kept(backend):
    output = backend.output("renewal")
    proxy = backend.proxy()
    if proxy is None:
        lock = output.lock("holder", STALE)
        lock.store = injected = Failing(lock.store, failures=1)
    else:
        lock = backend.output("renewal", proxy.endpoint_url).lock("holder", STALE)
    lost = []
    lock.on_lost = lost.append
    lock.acquire()
    if proxy is not None:
        proxy.lost_answers = 1  # the next renewal lands, but its answer never comes back
    try:
        time.sleep(STALE * 1.5)  # past a stale period, with the failed renewal in it
        deadline = time.monotonic() + 10 * STALE  # renewals come late on a loaded machine
        while record_of(output)["beat"] < 3 and time.monotonic() < deadline:
            time.sleep(STALE / 4)
        lock.check()
        record = record_of(output)
        assert (record["run_id"], record["state"]) == ("holder", "held")
        assert record["beat"] >= 3 and not lost
        assert (injected.failures if proxy is None else proxy.lost_answers) == 0  # it happened
    finally:
        lock.release()
        if proxy:
            proxy.stop()
    assert record_of(output)["state"] == "released"


def test_a_released_lock_is_taken_at_once_by_the_next_run(backend):
    with backend.lock("released", "first") as first:
        assert first.generation == 1
    started = time.monotonic()
    with backend.lock("released", "second", stale_after_s=60) as second:
        assert second.generation == 2
    assert time.monotonic() - started < 5


def test_staleness_is_the_holders_period_on_the_readers_clock(backend):
    output = backend.output("stale")
    output.lock("setup", STALE).store.create(another_holder(stale_after_s=2.0))
    reader = output.lock("reader", stale_after_s=0.2, wait_s=1.0)
    with pytest.raises(OutputLocked, match="did not go stale within 1 s") as refused:
        reader.acquire()  # its own 0.2 s do not count
    assert "other-run" in str(refused.value) and "2 s" in str(refused.value)

    started = time.monotonic()
    with output.lock("taker", stale_after_s=0.2) as taker:
        assert time.monotonic() - started >= 2.0
        assert taker.generation == 2
        assert record_of(output)["run_id"] == "taker"


def test_a_holder_that_renews_while_watched_is_never_taken_over(backend):
    second = backend.lock("alive", "second")
    with (
        backend.lock("alive", "holder"),
        pytest.raises(OutputLocked, match="renewed its lock while this run waited"),
    ):
        second.acquire()


def test_a_run_that_stops_renewing_loses_the_lock_and_commits_nothing(backend):
    """A holder frozen in a renewal (a paused process, a partition) past its stale period:
    another run takes over, and when the frozen one resumes, every commit is refused."""
    output = backend.output("frozen")
    holder = output.lock("frozen", STALE)
    holder.store = frozen = Failing(holder.store)
    lost = []
    holder.on_lost = lost.append
    holder.acquire()
    frozen.paused.clear()
    with output.lock("taker", STALE) as taker:
        assert taker.generation == 2
        frozen.paused.set()  # it resumes: its pending renewal finds the record replaced
        deadline = time.time() + 10
        while not lost and time.time() < deadline:
            time.sleep(0.05)
        assert lost and "another run took the lock over" in lost[0]
        staged = output.stage(b"late", "frozen", "late.txt")
        with pytest.raises(LockLost, match="lost the lock"):
            output.commit(staged, output.path("late.txt"), holder)
        assert not output.filesystem.exists(output.path("late.txt"))
        output.commit(output.stage(b"ok", "taker", "ok.txt"), output.path("ok.txt"), taker)
    holder.release()  # lost: it leaves the record alone
    assert record_of(output)["run_id"] == "taker"


class Clock:
    """A lease clock the test moves: a pause of the process without waiting for one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_paused_holder_renews_before_it_commits_or_commits_nothing(tmp_path):
    """After a pause longer than half the stale period, a commit first renews the lease
    (outside the shared guard it commits under, so it cannot wait for itself), then commits;
    where the store cannot be reached, the lease has expired and nothing is committed."""
    output = Output(str(tmp_path / "out"))
    output.create()
    clock = Clock()
    store = LocalRecord(output.path("_lock.json"), output.path("_lock.guard"))
    lock = OutputLock(store, output.uri, "paused", stale_after_s=60, clock=clock)
    lock.acquire()  # its heartbeat thread waits 15 s: the test moves the clock instead
    clock.now += 31
    staged = output.stage(b"renewed first", "paused", "a.txt")
    committing = threading.Thread(
        target=output.commit, args=(staged, output.path("a.txt"), lock), daemon=True
    )
    committing.start()
    committing.join(timeout=10)
    assert not committing.is_alive(), "the commit waited for its own renewal"
    assert Path(output.path("a.txt")).read_bytes() == b"renewed first"
    assert record_of(output)["beat"] == 1
    lock.store = Failing(store, failures=10**6)
    clock.now += 31
    staged = output.stage(b"too late", "paused", "b.txt")
    with pytest.raises(LockLost, match="no renewal succeeded for 30 s"):
        output.commit(staged, output.path("b.txt"), lock)
    assert not Path(output.path("b.txt")).exists()
    lock.release()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)  # locally: flock, no conditions
def test_a_store_that_ignores_conditional_writes_is_refused(backend):
    proxy = backend.proxy(ignore_conditions=True)
    assert proxy is not None
    try:
        with pytest.raises(ConfigError, match="run.locking=none"):
            backend.output("ignored", proxy.endpoint_url).lock("run", STALE)
    finally:
        proxy.stop()


def test_outputs_without_a_lock_implementation_are_refused():
    with pytest.raises(ConfigError, match="run.locking=none"):
        Output("memory://bucket/out").lock("run", STALE)


def test_same_host_name_in_another_pid_namespace_is_not_taken_over_at_once(tmp_path):
    output = Output(str(tmp_path / "out"))
    output.lock("setup", STALE).store.create(gone_holder_here("pid:[4026500000]"))
    with pytest.raises(OutputLocked):
        output.lock("reader", STALE, wait_s=1.0).acquire()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(backend):
    """Locally at once; on S3 once the dead holder's lease has ended (by this machine's clock),
    since a commit it sent may still be in flight until then."""
    output = backend.output("gone")
    here = ProcessIdentity.current().pid_namespace
    renewed_at = time.time()
    gone = gone_holder_here(here) | {"written_at": renewed_at, "stale_after_s": 2.0}
    output.lock("setup", STALE).store.create(gone)
    with output.lock("reader", STALE, wait_s=1.0) as reader:
        assert reader.generation == 2
        trusted_at = time.time()
    if backend.kind == "local":
        assert trusted_at - renewed_at < 1.0
    else:
        assert renewed_at + 2.0 / 2 <= trusted_at < renewed_at + 2.0


def test_readers_never_see_a_partial_lock_file(tmp_path):
    output = Output(str(tmp_path / "out"))
    seen, problems = [], []
    done = threading.Event()

    def read_constantly() -> None:
        while not done.is_set():
            try:
                seen.append(json.loads(Path(output.path("_lock.json")).read_text())["beat"])
            except (OSError, ValueError, KeyError) as error:
                problems.append(repr(error))

    with output.lock("holder", stale_after_s=0.2):
        reader = threading.Thread(target=read_constantly)
        reader.start()
        time.sleep(1.0)
        done.set()
        reader.join()
    assert not problems and len(set(seen)) >= 10


def test_an_unreadable_lock_file_is_a_lock_not_an_absent_one(tmp_path):
    output = Output(str(tmp_path / "out"))
    output.create()
    Path(output.path("_lock.json")).write_text('{"run_id": "trunc')
    with pytest.raises(OutputLocked):
        output.lock("reader", STALE, wait_s=0.5).acquire()


def test_a_takeover_cannot_fall_between_a_local_check_and_its_commit(tmp_path):
    """A committer frozen after the check and before the rename holds the takeover off until
    it has committed (for as long as the taker may wait): the taker then sees its file, so the
    window is closed."""
    output = Output(str(tmp_path / "out"))
    with frozen_process(FROZEN_COMMITTER, output) as committer:
        took: list[bool] = []
        taker = output.lock("taker", STALE, wait_s=60)

        def take() -> None:
            taker.acquire()
            took.append(os.path.exists(output.path("late.txt")))

        thread = threading.Thread(target=take)
        thread.start()
        thread.join(timeout=3 * STALE)
        assert thread.is_alive() and not took  # stale by now, but the commit is in flight
        committer.send_signal(signal.SIGCONT)
        thread.join(timeout=30)
        assert took == [True]
        taker.release()


@pytest.mark.parametrize("wait_s", [2.5, None])
def test_a_holder_frozen_inside_a_commit_stops_the_next_run_after_lock_wait_s(tmp_path, wait_s):
    """The next run gives up with OutputLocked (exit 2) once run.lock_wait_s has passed, or,
    without it, once the frozen holder's record has been stale and its guard then held for its
    stale period again: it neither hangs nor takes over under the commit."""
    output = Output(str(tmp_path / "out"))
    settings = RunSection(lock_stale_after_s=60, lock_wait_s=wait_s)
    bound = wait_s or 2 * STALE
    with frozen_process(FROZEN_COMMITTER, output):
        started = time.monotonic()
        with (
            pytest.raises(OutputLocked, match="run frozen.*kept the lock's guard"),
            holding_lock(output, "next", settings),
        ):
            pass
        assert bound <= time.monotonic() - started < bound + 1.5
        assert record_of(output)["run_id"] == "frozen"
    assert not os.path.exists(output.path("late.txt"))


def test_a_holder_that_cannot_take_its_own_guard_loses_the_lock_instead_of_hanging(tmp_path):
    """Another process frozen while holding the guard exclusively (as in its takeover): the
    holder's renewals and its commit wait only while its lease lasts, then it has lost the
    lock and commits nothing."""
    output = Output(str(tmp_path / "out"))
    lost: list[str] = []
    with (
        output.lock("holder", STALE, on_lost=lost.append) as holder,
        frozen_process(FROZEN_TAKER, output),
    ):
        staged = output.stage(b"late", "holder", "late.txt")
        started = time.monotonic()
        with pytest.raises(LockLost, match="lost the lock"):
            output.commit(staged, output.path("late.txt"), holder)
        assert time.monotonic() - started < STALE
        assert lost and "guard" in lost[0]
    assert not os.path.exists(output.path("late.txt"))
    assert record_of(output)["state"] == "held"  # lost: it leaves the record alone


def test_a_lost_lock_wakes_the_runs_main_thread_from_a_blocking_wait(tmp_path):
    """The heartbeat thread finds the lock taken over while the main thread waits (as in Ray
    Data's wait for a slow video): the wait ends at once with LockLost, also with SIGINT
    ignored, as it is in background jobs."""
    output = Output(str(tmp_path / "out"))
    store = output.lock("reader", STALE).store

    def take_over() -> None:
        while (current := store.read()) is None or current.record["run_id"] != "holder":
            time.sleep(0.01)
        store.replace(another_holder(generation=current.record["generation"] + 1), current.version)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.monotonic()
    try:
        with (
            pytest.raises(LockLost, match="another run took the lock over"),
            holding_lock(output, "holder", RunSection(lock_stale_after_s=STALE)),
        ):
            threading.Thread(target=take_over, daemon=True).start()
            threading.Event().wait(60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 30
    assert signal.getsignal(LOCK_LOST_SIGNAL) is signal.SIG_DFL  # put back
