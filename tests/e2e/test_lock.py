"""The output's lock, the slow checks: runs racing for it on local disk and S3, and a store that
holds a commit past the holder's lease while another run takes over."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.helpers.locks import (
    LATE,
)
from tests.helpers.s3 import FaultyProxy
from vivit_batch.config import StorageSection
from vivit_batch.errors import LockLost, OutputLocked
from vivit_batch.output import Output, OutputLock
from vivit_batch.storage import storage_options


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


def test_a_commit_the_store_holds_past_the_lease_never_lands_after_a_takeover(s3_server):
    """The store holds the old holder's CopyObject (and its renewals) far past its lease while
    another run takes over: the copy, sent once with the lease's deadline, is abandoned when
    the lease ends, so nothing of the old holder lands after the new holder read the output."""
    bucket = f"fence-{uuid.uuid4().hex[:12]}"
    s3_server.filesystem().mkdir(bucket)
    stale = 2.0
    proxy = FaultyProxy(s3_server.port, slow_key=("_lock.json", ".parquet"))
    old = Output(
        f"s3://{bucket}/out", storage_options(StorageSection(endpoint_url=proxy.endpoint_url))
    )
    new = Output(
        f"s3://{bucket}/out", storage_options(StorageSection(endpoint_url=s3_server.endpoint_url))
    )
    holder = old.lock("old", stale)
    holder.acquire()
    staged = old.stage(b"committed late", "old", "part-late.parquet")
    final = old.path("part-late.parquet")
    proxy.delay_s = 4 * stale
    failures: list[BaseException] = []

    def commit() -> None:
        try:
            old.commit(staged, final, holder)
        except (LockLost, OSError) as error:
            failures.append(error)

    committing = threading.Thread(target=commit)
    started = time.monotonic()
    committing.start()
    with new.lock("new", stale, wait_s=30) as taker:
        assert taker.generation == holder.generation + 1
        read_at = time.monotonic()
        assert not new.filesystem.exists(final)
        time.sleep(max(0.0, started + proxy.delay_s + 1.0 - time.monotonic()))
        assert not new.filesystem.exists(final), "the old holder's commit landed after the takeover"
    committing.join(timeout=30)
    assert failures and not committing.is_alive()
    assert read_at - started < proxy.delay_s  # the store still held the copy when it read
    holder.release()
    proxy.stop()
