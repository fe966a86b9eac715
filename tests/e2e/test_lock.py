"""The output's lock, on local disk and on a real S3 server (moto): one writer however late its
writes land, renewals that survive a failure, staleness judged by the holder's own period on
the reader's own clock, and commits fenced. No Ray: these run in seconds.

The end-to-end half (slow); the fast tests are in tests/unit."""

from __future__ import annotations

import threading

import pytest

from tests.helpers.locks import (
    LATE,
)
from vivit_batch.errors import OutputLocked
from vivit_batch.output import OutputLock


@pytest.mark.slow  # 20 rounds of a race on each store: about 10 s
def test_two_runs_racing_never_both_take_the_lock(backend):
    """20 rounds at once, each on its own output: one racer's writes land 1.2 s late."""
    proxy = backend.proxy(delay_s=LATE)
    outcomes: dict[str, list[str]] = {}

    def race(lock: OutputLock, name: str) -> None:
        try:
            lock.acquire()
            outcomes[name].append("took it")
        except OutputLocked:
            outcomes[name].append("refused")

    locks = []
    for round_ in range(20):
        name = f"race{round_}"
        outcomes[name] = []
        locks += [
            (backend.lock(name, "on-time"), name),
            (backend.late_lock(name, "late", proxy), name),
        ]
    threads = [threading.Thread(target=race, args=pair) for pair in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert {name: sorted(found) for name, found in outcomes.items()} == {
            name: ["refused", "took it"] for name in outcomes
        }
    finally:
        for lock, _ in locks:
            lock.release()
        if proxy:
            proxy.stop()
