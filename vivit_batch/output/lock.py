"""One run at a time per output: a lease on `_lock.json`, renewed by compare-and-swap.

The protocol (the README's "Re-running" section states its guarantees):

- Taking the lock is one atomic create-if-absent of the record (`records`); taking over a
  released or stale lock is a replace of exactly the version that was seen released or stale.
  Of two runs racing, one wins, however late either's writes land.
- The holder renews (heartbeats) every `stale_after_s / 4` with a replace of its own last
  version. A failed renewal is retried; if another run replaced the record, or no renewal has
  succeeded for `stale_after_s / 2`, the lock is lost: `check` raises `LockLost` and the
  `on_lost` callback tells the run to stop.
- A lock is stale only when a run has watched the same version for the holder's own
  `stale_after_s` (written in the record) on its own clock: no other host's clock or settings
  are trusted. Only a holder on provably the same machine (boot id and PID namespace) whose
  process is gone is taken over at once.
- Every commit runs inside `fenced()`: the record still names this run and generation, and the
  lease, measured after that read, is still valid on the holder's clock. Locally the guard is
  held shared across the commit, so a takeover (which holds it exclusively) cannot fall between
  the check and the commit. On S3 the fence grants a `Lease`: the commit is one request, sent
  once, and abandoned when the lease ends (`Lease.run`), or at once when the lock is lost. The
  lease ends half a stale period after the last renewal was sent, and a takeover needs the
  record unchanged for a whole stale period after that renewal landed: so every request of an
  old holder has ended on its side at least half a stale period before a new holder begins.
- No wait for the local guard is unbounded (`guard_patience`): a run taking the lock waits for
  it within `wait_s` (else the holder's stale period) and then stops with `OutputLocked`; the
  holder waits for it only while its lease lasts, after which, by the rules above, it has lost
  the lock.
- Releasing replaces the record with a `released` one (no delete: a conditional delete is not
  something every S3-compatible store has).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vivit_batch.config import RunSection
from vivit_batch.errors import LockLost, OutputLocked
from vivit_batch.output.records import Conflict, GuardBusy, LocalRecord, Versioned

log = logging.getLogger("vivit_batch")

HELD, RELEASED = "held", "released"
DEFAULT_STALE_AFTER_S = RunSection.lock_stale_after_s
"""For records that do not say (unreadable, or written without the field)."""


class LeaseEnded(TimeoutError):
    """A fenced request was not answered before the lease ended: it was abandoned (its
    connection closed), and is retried, if at all, only through a new fence check."""


def lease_clock() -> float:
    """Seconds on a clock that never jumps and keeps counting while the machine sleeps
    (CLOCK_BOOTTIME), so a suspended laptop does not believe its lease is still fresh."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


@dataclass(frozen=True)
class ProcessIdentity:
    """Who holds a lock, and what it takes to be sure that a holder is the same machine."""

    host: str
    pid: int
    pid_start: str | None
    boot_id: str | None
    pid_namespace: str | None

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(
            host=platform.node(),
            pid=os.getpid(),
            pid_start=_process_start(os.getpid()),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_readlink("/proc/self/ns/pid"),
        )

    def to_record(self) -> dict:
        return {
            "host": self.host,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "boot_id": self.boot_id,
            "pid_namespace": self.pid_namespace,
        }

    def holder_is_gone(self, holder: dict) -> bool:
        """True only when `holder` ran on this very machine and PID namespace and its process
        no longer exists (or the PID now belongs to a process started later)."""
        same_machine = (
            self.boot_id is not None
            and self.pid_namespace is not None
            and holder.get("boot_id") == self.boot_id
            and holder.get("pid_namespace") == self.pid_namespace
        )
        if not same_machine or not isinstance(holder.get("pid"), int):
            return False
        started = _process_start(holder["pid"])
        recorded = holder.get("pid_start")
        return started is None or (recorded is not None and started != recorded)


@dataclass
class Lease:
    """What a fence grants: requests sent under it must end by `ends_at` (on `clock`; None: no
    end, for `run.locking=none`). Requests run through `run` are cancelled when the lock is
    lost."""

    ends_at: float | None
    clock: Callable[[], float] = field(default=lease_clock)
    in_flight: set[concurrent.futures.Future] = field(default_factory=set)
    """shared with the lock, which cancels them when it is lost"""

    def seconds_left(self) -> float | None:
        return None if self.ends_at is None else self.ends_at - self.clock()

    def run(self, request: Callable[[], Awaitable[Any]], loop: asyncio.AbstractEventLoop) -> Any:
        """Await `request()` on `loop` (an fsspec filesystem's): it starts only while the lease
        lasts, and is cancelled (its connection closed) when the lease ends, or the lock is
        lost, before it is answered."""

        async def within_lease():
            left = self.seconds_left()
            if left is not None and left <= 0:
                raise LeaseEnded("the lease ended before the request was sent")
            return await request()

        future = asyncio.run_coroutine_threadsafe(within_lease(), loop)
        self.in_flight.add(future)
        try:
            return future.result(timeout=self.seconds_left())
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LeaseEnded("the lease ended before the store answered") from None
        except concurrent.futures.CancelledError:
            raise LockLost("the lock was lost while a request was in flight") from None
        finally:
            self.in_flight.discard(future)


class OutputLock:
    """The lease of one run on one output. Use as a context manager, or `acquire`/`release`."""

    def __init__(
        self,
        store,
        output_uri: str,
        run_id: str,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        wait_s: float | None = None,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = lease_clock,
    ):
        self.store = store
        if isinstance(store, LocalRecord):
            store.patience = self.guard_patience
        self.output_uri = output_uri
        self.run_id = run_id
        self.stale_after_s = stale_after_s
        self.wait_s = wait_s
        """most seconds to wait for another run's lock; None: as long as it takes to be stale"""
        self.on_lost = on_lost
        self.clock = clock
        self.me = ProcessIdentity.current()
        self.generation = 0
        self.lost: str | None = None
        self._acquiring_since = 0.0
        self._version = ""
        """the version of the record this run last wrote"""
        self._beats = 0
        self._renewed_at = 0.0
        """lease clock when the last successful renewal was sent"""
        self._in_flight: set[concurrent.futures.Future] = set()
        """requests sent under a fence and not yet answered (cancelled when the lock is lost)"""
        self._writing = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="lock-heartbeat")

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # Taking the lock

    def acquire(self) -> None:
        started = self._acquiring_since = self.clock()
        watched: Versioned | None = None
        watched_since = 0.0
        while True:
            current = self.store.read()
            if current is None:
                if self._try_take(None):
                    return
                continue
            holder = current.record
            if holder.get("state") == RELEASED:
                if self._try_take(current):
                    return
                continue
            if self.me.holder_is_gone(holder):
                if self._try_take(current):
                    self._outlast_requests_of(holder)
                    return
                continue
            if watched is not None and watched.version != current.version:
                raise self._locked(holder, "it renewed its lock while this run waited")
            if watched is None:
                watched, watched_since = current, self.clock()
                log.info(self._waiting_message(holder))
            if self.clock() - watched_since >= stale_after(holder):
                if self._try_take(current):
                    log.warning("took over the lock of run %s, stale", holder.get("run_id"))
                    return
                continue  # another run moved first: the next read shows who
            pause = watch_pause(holder)
            if self.wait_s is not None:
                waited = self.clock() - started
                if waited >= self.wait_s:
                    raise self._locked(holder, f"it did not go stale within {self.wait_s:g} s")
                pause = min(pause, self.wait_s - waited)
            time.sleep(pause)

    def _try_take(self, current: Versioned | None) -> bool:
        generation = 1 if current is None else int(current.record.get("generation") or 0) + 1
        sent = self.clock()
        try:
            self._version = self._write(self._record(HELD, generation, 0), current)
        except Conflict:
            return False
        except GuardBusy as error:
            holder = current.record if current else {}
            why = f"a process (a run frozen inside a commit?) kept the lock's guard: {error}"
            raise self._locked(holder, why) from None
        self.generation, self._beats, self._renewed_at = generation, 0, sent
        self._heartbeat.start()
        return True

    def _outlast_requests_of(self, holder: dict) -> None:
        """A holder on this machine whose process is gone may have left a commit in flight,
        which ends, at the latest, when its lease ends: half its stale period after its last
        renewal, dated by this very machine's clock. Wait for that before trusting what is
        committed (not locally: there commits are made under the guard this run now holds)."""
        written_at = holder.get("written_at")
        if self.store.commits_under_guard or not isinstance(written_at, (int, float)):
            return
        lease = stale_after(holder) / 2
        left = min(lease, written_at + lease - time.time())
        if left > 0:
            log.info("waiting %.1f s for the requests the previous holder may have sent", left)
            time.sleep(left)

    # Holding it

    def _beat(self) -> None:
        interval = self.stale_after_s / 4
        wait = interval
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = interval
            except LockLost:
                return
            except OSError as error:
                log.warning("could not renew the lock on %s (retrying): %s", self.output_uri, error)
                if self.clock() - self._renewed_at >= self.stale_after_s / 2:
                    self._lose(f"no renewal succeeded for {self.stale_after_s / 2:g} s ({error})")
                    return
                wait = min(interval, max(0.05, self.stale_after_s / 40))

    def renew(self) -> None:
        """One heartbeat: replace this run's own last version. `LockLost` if another run wrote
        the record since; `OSError` if the store could not be reached."""
        with self._writing:
            if self.lost:
                raise LockLost(self.lost)
            sent = self.clock()
            record = self._record(HELD, self.generation, self._beats + 1)
            try:
                self._version = self._write(record, Versioned({}, self._version))
            except Conflict:
                self._lose("another run took the lock over")
                raise LockLost(self.lost) from None
            self._beats += 1
            self._renewed_at = sent

    def check(self) -> Lease:
        """Raise `LockLost` unless this run certainly still holds the lock: the record names its
        run and generation, and its lease, measured after that read, is fresh on its own clock.
        Returns the lease left. Reads, never writes (it runs under the shared guard)."""
        if self.lost:
            raise LockLost(self.lost)
        current = self.store.read()
        record = current.record if current else {}
        if (record.get("run_id"), record.get("generation"), record.get("state")) != (
            self.run_id,
            self.generation,
            HELD,
        ):
            self._lose(f"the lock now belongs to run {record.get('run_id')}")
            raise LockLost(self.lost)
        lease = Lease(self._lease_ends_at(), self.clock, self._in_flight)
        if (lease.seconds_left() or 0) <= 0:
            self._lose(f"no renewal succeeded for {self.stale_after_s / 2:g} s")
            raise LockLost(self.lost)
        return lease

    @contextlib.contextmanager
    def fenced(self) -> Iterator[Lease]:
        """Commit inside this: the check holds for the whole block on local disk; on S3 the
        block should be one request, run through the `Lease` it yields. A lease older than a
        renewal interval is renewed first, outside the guard (a renewal needs the guard
        exclusively): a run that was paused renews, or learns it lost the lock, before it
        commits; a commit starts with at least a quarter of the stale period of lease left."""
        if not self.lost and self.clock() - self._renewed_at >= self.stale_after_s / 4:
            with contextlib.suppress(OSError):  # check() decides whether the lease still holds
                self.renew()
        with self._commit_guard():
            yield self.check()

    @contextlib.contextmanager
    def _commit_guard(self) -> Iterator[None]:
        """The store's guard, shared. Waited for only while the lease lasts (`guard_patience`):
        a holder that cannot have it by then can no more renew than commit, so it has lost the
        lock."""
        with contextlib.ExitStack() as guard:
            try:
                guard.enter_context(self.store.guarded(exclusive=False))
            except GuardBusy as error:
                if not self.lost:
                    self._lose(
                        f"it could not take the lock's guard while its lease lasted ({error})"
                    )
                raise LockLost(self.lost) from None
            yield

    def _lease_ends_at(self) -> float:
        """On this run's clock: half the stale period after its last renewal was sent."""
        return self._renewed_at + self.stale_after_s / 2

    def guard_patience(self) -> float:
        """How long this run may wait for the local guard from now. Holding the lock: while its
        lease lasts (a renewal or commit that cannot have the guard by then is lost by the
        rules). Taking it: until `wait_s` from the start of `acquire`, else for the stale period
        of the record's holder (what a waiter waits by the rules)."""
        if self._version:
            return self._lease_ends_at() - self.clock()
        if self.wait_s is not None:
            return self._acquiring_since + self.wait_s - self.clock()
        current = self.store.read()
        return stale_after(current.record if current else {})

    # Letting go

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join()
        if self.lost or not self._version:
            return
        with self._writing:
            try:
                record = self._record(RELEASED, self.generation, self._beats + 1)
                self._write(record, Versioned({}, self._version))
            except (Conflict, OSError) as error:
                log.warning(
                    "could not release the lock on %s (%r): a run on this machine takes it "
                    "over once this process has ended, one on another machine once the lock "
                    "has been unchanged for %g s (run.lock_stale_after_s)",
                    self.output_uri,
                    error,
                    self.stale_after_s,
                )

    def _lose(self, reason: str) -> None:
        self.lost = (
            f"run {self.run_id} lost the lock on {self.output_uri}: {reason}. It commits nothing "
            "more; what it committed before stays, and a later run labels what is missing."
        )
        log.error(self.lost)
        for request in list(self._in_flight):
            request.cancel()
        if self.on_lost:
            self.on_lost(self.lost)

    # The record

    def _record(self, state: str, generation: int, beat: int) -> dict:
        return {
            "state": state,
            "run_id": self.run_id,
            "generation": generation,
            "beat": beat,
            "stale_after_s": self.stale_after_s,
            **self.me.to_record(),
            "written_at": time.time(),  # for people reading the file; never trusted
            "write_id": uuid.uuid4().hex,
        }

    def _write(self, record: dict, current: Versioned | None) -> str:
        """Create or replace; a `Conflict` caused by this very write having landed already (a
        retried request) counts as success."""
        try:
            if current is None:
                return self.store.create(record)
            return self.store.replace(record, current.version)
        except Conflict:
            now = self.store.read()
            if now is not None and now.record.get("write_id") == record["write_id"]:
                return now.version
            raise

    def _locked(self, holder: dict, why: str) -> OutputLocked:
        return OutputLocked(
            f"output {self.output_uri} is being written by run {holder.get('run_id')} (host "
            f"{holder.get('host')}, pid {holder.get('pid')}): {why}. Wait for it to finish; a "
            f"dead run's lock is taken over once it stays unchanged for "
            f"{stale_after(holder):g} s (the holder's run.lock_stale_after_s)."
        )

    def _waiting_message(self, holder: dict) -> str:
        return (
            f"output {self.output_uri} is locked by run {holder.get('run_id')} (host "
            f"{holder.get('host')}, pid {holder.get('pid')}); waiting: it is taken over if it "
            f"stays unchanged for {stale_after(holder):g} s, this run stops if it is renewed"
        )


def watch_pause(holder: dict) -> float:
    """How long one waiting on a held lock sleeps between looks at it."""
    return min(5.0, max(0.05, stale_after(holder) / 20))


def stale_after(holder: dict) -> float:
    """The stale period a lock's holder declared (its run.lock_stale_after_s)."""
    value = holder.get("stale_after_s")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_STALE_AFTER_S


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None when it does not exist)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def _read(path: str) -> str | None:
    try:
        with open(path) as stream:
            return stream.read().strip()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
