"""Which of the manifest's videos the output holds already, and what the run does with each:
the committed rows read by Ray tasks file by file, hash-joined with the manifest's rows on
`video_id` by Ray Data, and each joined row decided by `work.decide`. No task and no driver
holds every committed id: each join task holds one partition of both sides (`join_partitions`),
and the driver collects the counts and the relabelled videos (with the file holding each)
only; the decided rows stay in Ray's object store for the pipeline."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyarrow as pa
import ray

from vivit_batch.job.pipeline import LIGHT_TASK, arrow_tables, manifest_with_ids
from vivit_batch.job.prepare import PreparedJob
from vivit_batch.output import Output
from vivit_batch.work import (
    HOLDER,
    Work,
    action_counts,
    committed_schema,
    decide,
    read_committed,
    relabelled,
    relabelled_holders,
    summed,
)

ROWS_PER_PARTITION = 500_000
MIN_PARTITIONS = 2
SHUFFLE_BATCH_BYTES = 64 * 2**20
"""The most input one of the join's map tasks takes at once (Ray Data's default, 1 GiB, would
give one map task every committed row of a 10M-row output)."""
FILES_PER_TASK = 50
"""Committed files one task reads, one after the other (it holds one file's rows at a time): a
task costs about as much as reading 20 small files, so fewer tasks than files."""


def join_partitions(rows: int) -> int:
    """How many partitions a join of `rows` rows in all (the manifest's and the committed ones)
    takes: one per `ROWS_PER_PARTITION`, at least `MIN_PARTITIONS`.

    Ray Data's hash join (shuffle v2) runs as map tasks that split their input by the hash of
    `video_id` into the partitions, then one reduce task per partition that joins that
    partition of both sides with Polars. A map task takes at most `SHUFFLE_BATCH_BYTES` of
    blocks (or one block, at most Ray Data's 128 MiB target), and a reduce task one partition:
    about `ROWS_PER_PARTITION` rows, since ids hash evenly. So no task's memory depends on how
    many rows the output holds: more rows make more partitions, not larger ones. 500,000 rows
    of a manifest row (a 20-character id and a 93-byte URI) and its committed row (id, status,
    file) come to 74 MB of Arrow (about 100 MB with the source version of
    `--refresh-changed`), and the joined table about as much again. The floor splits an output of a
    partition or less in two, for the two cores of a small machine; more would cost more than
    they save there (each reduce task wants a worker process of its own, about a CPU-second
    to start)."""
    return max(MIN_PARTITIONS, math.ceil(rows / ROWS_PER_PARTITION))


def decided_work(job: PreparedJob, output: Output) -> Work:
    """The work over what `output` holds: no join when it holds no rows."""
    files = output.data_files()
    if not files:
        return Work.fresh(job.manifest.rows)
    committed = committed_rows(job, output, files)
    held = committed.count()
    if not held:
        return Work.fresh(job.manifest.rows)
    rows = decided_rows(job, committed, join_partitions(job.manifest.rows + held))
    holders = per_block(rows, relabelled_holders)
    work = Work(relabelled(holders, files, job.partition_by), rows=rows)
    return work.counted(summed(per_block(rows, action_counts)))


def decided_rows(
    job: PreparedJob, committed: ray.data.Dataset, partitions: int
) -> ray.data.Dataset:
    """The manifest's rows joined with their `committed` rows and decided (`work.decide`),
    held in the object store: the run's counts, the relabelled videos and the pipeline's rows
    all come from this one decision."""
    run = job.config.run
    joined = joined_side(job).join(
        committed, "left_outer", num_partitions=partitions, on=("video_id",)
    )
    options = {
        "mode": run.mode,
        "refresh_changed": run.refresh_changed,
        "options": job.decode.storage_options,
    }
    return joined.map_batches(
        decide, fn_kwargs=options, batch_format="pyarrow", **LIGHT_TASK
    ).materialize()


def joined_side(job: PreparedJob) -> ray.data.Dataset:
    """The manifest's rows with their ids, made with `SHUFFLE_BATCH_BYTES` as the context of
    the join that comes from them (a dataset copies the driver's context when it is made and
    the datasets made from it share that copy, so the driver's own is left as it was)."""
    context = ray.data.DataContext.get_current()
    driver_bytes = context.shuffle_input_batch_bytes
    context.shuffle_input_batch_bytes = SHUFFLE_BATCH_BYTES
    try:
        return manifest_with_ids(job)
    finally:
        context.shuffle_input_batch_bytes = driver_bytes


def per_block(rows: ray.data.Dataset, summary: Callable[[pa.Table], pa.Table]) -> list[pa.Table]:
    """`summary` of each block of `rows`."""
    return arrow_tables(rows.map_batches(summary, batch_format="pyarrow", **LIGHT_TASK))


def committed_rows(job: PreparedJob, output: Output, files: list[str]) -> ray.data.Dataset:
    """One row per committed video (`work.committed_side`), read from the output's data
    `files` by Ray tasks, a file at a time, and held in the object store: counted there, then
    joined."""
    schema = committed_schema(job.config.run.refresh_changed, job.decode.sampling.segments)
    listed = ray.data.from_items(
        [{"path": path, HOLDER: i} for i, path in enumerate(files)],
        override_num_blocks=math.ceil(len(files) / FILES_PER_TASK),
    )
    return listed.map_batches(
        read_committed,
        fn_kwargs={"output": output, "schema": schema},
        batch_size=1,
        batch_format="pyarrow",
    ).materialize()
