"""`vivit-batch lock`: could a run take an output's lock now? Read-only, by the lock's own rules.

A lock record alone cannot tell a live holder from a dead one: like a run waiting for the lock
(`OutputLock.acquire`), this watches the record on this machine's clock until it changes (its
holder renewed it: a run started now would stop) or stays unchanged for the holder's own stale
period (a run started now would take it over). A live holder renews every quarter of that
period, so the answer comes within a quarter of it; a dead holder's takes the whole period.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vivit_batch.output.lock import RELEASED, OutputLock, stale_after, watch_pause
from vivit_batch.output.records import Versioned


@dataclass(frozen=True)
class LockState:
    free: bool
    """a run started now would take the lock (at once, or once it has watched it go stale)"""
    description: str


def lock_state(lock: OutputLock) -> LockState:
    """The state of `lock`'s record (`lock` is only read, never taken)."""
    current = lock.store.read()
    if current is None:
        return LockState(True, "free: no run has locked this output yet")
    holder = current.record
    if holder.get("state") == RELEASED:
        return LockState(True, f"released by run {holder.get('run_id')}{_ago(holder)}")
    if lock.me.holder_is_gone(holder):
        return LockState(True, f"stale: {_holder(holder)} has ended (same machine)")
    return _watch(lock, current)


def _watch(lock: OutputLock, watched: Versioned) -> LockState:
    holder = watched.record
    period = stale_after(holder)
    since = lock.clock()
    while lock.clock() - since < period:
        time.sleep(watch_pause(holder))
        current = lock.store.read()
        if current is None or current.version != watched.version:
            if current is None or current.record.get("state") == RELEASED:
                return lock_state(lock)
            renewed = current.record
            return LockState(False, f"held by {_holder(renewed)}, renewed{_ago(renewed)}")
    return LockState(
        True,
        f"stale: {_holder(holder)} has not renewed it for {period:g} s (its stale period); "
        "a run started now takes it over",
    )


def _holder(record: dict) -> str:
    return f"run {record.get('run_id')} on host {record.get('host')} (pid {record.get('pid')})"


def _ago(record: dict) -> str:
    """How long ago the record was written, by the writer's clock: for people only."""
    written_at = record.get("written_at")
    if not isinstance(written_at, (int, float)):
        return ""
    return f" {max(0.0, time.time() - written_at):.0f} s ago (by its clock)"
