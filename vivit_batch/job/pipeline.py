"""The job as Ray Data datasets: the manifest with ids, and manifest -> versions -> decode
actors -> inference actors; also the one inference actor `validate` places on the cluster.
Which manifest rows are labelled is `committed_join`'s."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator, Iterator
from datetime import datetime, timezone

import pyarrow as pa
import ray

from vivit_batch.config import OutputSection
from vivit_batch.errors import UsageError
from vivit_batch.job.cluster import decode_placement
from vivit_batch.job.prepare import PreparedJob
from vivit_batch.job.resources import Resources
from vivit_batch.manifest import base_directory, read_dataset, schema_of, with_ids
from vivit_batch.output import FileWriter, WholeVideos, WriteStats, file_rows
from vivit_batch.source_versions import with_versions
from vivit_batch.stages.decode import DecodeStage
from vivit_batch.stages.inference import InferenceStage, InferenceStageOptions
from vivit_batch.storage import job_storage_options
from vivit_batch.work import Work, to_label

log = logging.getLogger("vivit_batch")

LIGHT_TASKS = 1
LIGHT_TASK = {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(LIGHT_TASKS)}
"""Reading the manifest, assigning ids and looking up versions are light and short: they take
no CPU slot, so that the decode and inference pools can have all of them, and each step runs
`LIGHT_TASKS` task at a time (the version lookups of a block run on threads), so that they
keep to a worker or two instead of starting a Python process per block (about a CPU second
each)."""


def labelled_parts(
    job: PreparedJob, resources: Resources, run_id: str, work: Work
) -> Iterator[ray.data.Dataset]:
    """The pipeline over each part of the rows `work` labels (`parts_to_label`), each made once
    the last one is let go: a part's execution holds the driver's memory until it is. None
    where there is nothing to label: no actor starts."""
    if not work.to_label:
        return
    most = job.config.run.videos_per_part
    parts = len(part_starts(work.to_label, most))
    for number, rows in enumerate(parts_to_label(job, work), 1):
        if parts > 1:
            log.info("labelling part %d of %d (at most %d videos each)", number, parts, most)
        yield build_dataset(job, resources, run_id, rows)


def build_dataset(
    job: PreparedJob, resources: Resources, run_id: str, rows: ray.data.Dataset
) -> ray.data.Dataset:
    """The pipeline over `rows`, the manifest's rows with ids to label."""
    config = job.config
    dataset = rows.map_batches(
        with_versions,
        fn_kwargs={"options": job.decode.storage_options},
        batch_format="pyarrow",
        **LIGHT_TASK,
    )
    dataset = in_decode_calls(dataset, resources).map_batches(
        DecodeStage,
        fn_constructor_kwargs={"options": job.decode},
        compute=actor_pool(
            resources.decode_actors + resources.gpu_decoders,
            resources.max_decode_actors + resources.gpu_decoders,
        ),
        num_cpus=resources.decode_cpus,
        ray_remote_args_fn=decode_placement(resources),
        batch_size=resources.decode_batch_size,
        batch_format="pyarrow",
    )
    options = inference_options(job, run_id, resources)
    return dataset.map_batches(
        InferenceStage,
        fn_constructor_kwargs={"options": options},
        compute=actor_pool(
            resources.inference_actors, resources.max_inference_actors, options.concurrent_batches
        ),
        num_cpus=resources.inference_cpus,
        num_gpus=resources.inference_gpus,
        batch_size=config.resources.batch_size,
        batch_format="pyarrow",
    )


def in_decode_calls(dataset: ray.data.Dataset, resources: Resources) -> ray.data.Dataset:
    """`dataset` in blocks of one decode call's videos (streamed: split as they come). Ray Data
    hands a larger block to one decode actor whole, and a read makes about two blocks per CPU
    of the cluster whatever the manifest's length (32 of 625 rows for 20,000 on 16 CPUs): the
    last ones kept a few actors decoding while the others idled (BENCHMARKS.md, Decode pool:
    15 CPU decode actors got 0.69 of their summed rate over 1,000 videos, now 0.88)."""
    return dataset.repartition(target_num_rows_per_block=resources.decode_batch_size)


GPU_BATCHES_AT_ONCE = 2
"""Batches a GPU inference actor labels at once: while one waits for its forward pass, the
other's clips are copied to the device and its host work done (a CPU actor's torch threads
would only compete)."""


def actor_pool(start: int, most: int, calls_at_once: int = 1) -> ray.data.ActorPoolStrategy:
    """A pool of `start` actors that Ray Data grows up to `most` while inputs queue and the
    cluster has room (nodes that join included), and shrinks back as they run out; each actor
    runs `calls_at_once` batches at a time, in threads."""
    return ray.data.ActorPoolStrategy(
        min_size=start,
        max_size=most,
        max_concurrent_calls_per_actor=calls_at_once,
        enable_true_multi_threading=calls_at_once > 1,
    )


def parts_to_label(job: PreparedJob, work: Work) -> Iterator[ray.data.Dataset]:
    """The manifest's rows with ids that `work` labels, in parts of at most
    `run.videos_per_part` videos: Ray Data keeps a few kilobytes of the driver's memory per
    block of an execution until the execution is let go (BENCHMARKS.md, Driver memory), so a
    long manifest is labelled by one execution per part. One part comes streamed from the read
    or the join; more are split from the rows held in the object store, and each is let go
    once labelled."""
    rows = rows_to_label(job, work)
    if work.to_label > job.config.run.videos_per_part:
        yield from held_parts(rows.materialize(), job.config.run.videos_per_part)
    elif work.rows is None:
        yield rows  # in the read's blocks
    else:
        yield in_read_blocks(rows, work.to_label)


def rows_to_label(job: PreparedJob, work: Work) -> ray.data.Dataset:
    """The manifest's rows with ids that `work` labels: all of them when it decided nothing
    (a fresh output), else those of its decided rows (`work.decide`)."""
    if work.rows is None:
        return manifest_with_ids(job)
    return work.rows.map_batches(to_label, batch_format="pyarrow", **LIGHT_TASK)


def held_parts(rows: ray.data.MaterializedDataset, videos: int) -> Iterator[ray.data.Dataset]:
    """`rows` in parts of `videos` rows, each in the blocks a read of it would make."""
    parts = rows.split_at_indices(part_starts(rows.count(), videos)[1:])
    del rows
    while parts:
        part = parts.pop(0)  # not held here once labelled: its blocks go
        yield in_read_blocks(part, part.count())


def part_starts(videos: int, per_part: int) -> list[int]:
    """Where each part of `videos` rows starts, parts of `per_part` rows (one part at least)."""
    return list(range(0, videos, per_part)) or [0]


def in_read_blocks(rows: ray.data.Dataset, videos: int) -> ray.data.Dataset:
    """`rows`, held in the object store, in as many blocks as a read of them would make: the
    join and a split leave a few large blocks, and a block's version lookups all finish before
    any of its rows goes on."""
    blocks = min(videos, ray.data.DataContext.get_current().read_op_min_num_blocks)
    return rows.repartition(max(1, blocks))  # blocks split and combined, not shuffled


def arrow_tables(dataset: ray.data.Dataset) -> list[pa.Table]:
    """The dataset's blocks that hold rows (an empty one may come without its columns)."""
    return [table for table in ray.get(dataset.to_arrow_refs()) if table.num_rows]


def partition_values(partition_by: tuple[str, ...], started: float) -> dict[str, str]:
    run_date = datetime.fromtimestamp(started, timezone.utc).date().isoformat()
    return {name: {"run_date": run_date}[name] for name in partition_by}


def inference_options(job: PreparedJob, run_id: str, resources: Resources) -> InferenceStageOptions:
    config = job.config
    return InferenceStageOptions(
        model_source=config.model.source,
        revision=job.checkpoint.commit,
        weights_sha256=job.checkpoint.weights_sha256,
        processor=job.decode.processor,
        run_id=run_id,
        top_k=config.model.top_k,
        labels=job.labels,
        precision=config.model.precision,
        compile=config.model.compile,
        clips_per_forward=config.resources.clips_per_forward,
        device=resources.inference_device,
        torch_threads=None if resources.inference_gpus else resources.inference_threads,
        concurrent_batches=GPU_BATCHES_AT_ONCE if resources.inference_gpus else 1,
    )


def label_on_cluster(job: PreparedJob, resources: Resources, decoded: pa.Table) -> pa.Table:
    """Label `decoded` rows in one inference actor placed as the run would place it (`validate`:
    the device check runs where the run's would)."""
    stage = ray.remote(InferenceStage).options(
        num_cpus=resources.inference_cpus, num_gpus=resources.inference_gpus
    )
    actor = stage.remote(inference_options(job, "validate", resources))
    try:
        with stage_errors():
            return ray.get(actor.__call__.remote(decoded))
    finally:
        ray.kill(actor)  # now, not when the handle is collected: it may hold a GPU


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """A stage's refusal (a device or checkpoint error: exit code 2) raised as itself, not as
    Ray's wrapper of it, and in its own words: a refusal is not the transient failure that Ray
    Data's retry advice is for."""
    try:
        yield
    except UsageError as error:
        refusal = getattr(error, "cause", error)
        refusal.args = (refusal.message,)
        raise refusal from None


def manifest_with_ids(job: PreparedJob) -> ray.data.Dataset:
    """The manifest's rows with resolved URIs and ids."""
    return read_manifest_dataset(job).map_batches(
        with_ids,
        fn_kwargs=id_options(job),
        batch_format="pyarrow",
        **LIGHT_TASK,
    )


def read_manifest_dataset(job: PreparedJob) -> ray.data.Dataset:
    """The manifest's rows; a directory, glob or prefix from the scan's listing file (not
    listed again: its versions stand in for a HEAD per video), a JSON Lines file parsed to the
    scan's schema."""
    scanned = job.manifest
    return read_dataset(
        job.config.manifest,
        job_storage_options(job.config),
        scanned.listing,
        None if scanned.schema is None else schema_of(scanned.schema),
        num_cpus=0,
        tasks=LIGHT_TASKS,
    )


def id_options(job: PreparedJob) -> dict:
    """`with_ids`'s base and prefix for the manifest; `manifest.column_prefix` is for its own
    columns, so a listing's version columns keep their names."""
    manifest = job.config.manifest
    prefix = None if job.manifest.listing is not None else manifest.column_prefix
    return {"base": base_directory(manifest), "prefix": prefix}


def first_rows(job: PreparedJob, count: int) -> pa.Table:
    """The manifest's first `count` rows, with ids, as the decode stage receives them."""
    table = pa.concat_tables(arrow_tables(read_manifest_dataset(job).limit(count)))
    return with_ids(table, **id_options(job))


def staged_files(
    dataset: ray.data.Dataset,
    writer: FileWriter,
    segments: bool,
    output: OutputSection,
    labelled: WriteStats,
) -> Generator[dict, None, None]:
    """The files `writer` stages here from the labelled rows as they come (`file_rows`: a file
    at `output.rows_per_file` rows, at `output.max_held_bytes`, or once its oldest rows have
    waited `output.commit_every_s`; and one of the rows held when the pipeline stops or fails),
    a row each (see `FileWriter`), the rows counted into `labelled` as they come; in segments
    mode whole videos only (`WholeVideos`), so that no file, and no commit, holds a part of a
    video."""
    every_s = output.commit_every_s
    # Ray Data's execution ends as this does, whatever ends it (a file that cannot be staged
    # too): left to the interpreter's exit, after Ray's shutdown, it started Ray again and
    # could hang the command for good.
    with contextlib.closing(
        iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    ) as batches:
        if segments:
            videos = WholeVideos(output.max_held_bytes)
            files = videos.files(batches, writer.rows_per_file, every_s, labelled)
        else:
            completed = ([batch] if batch.num_rows else [] for batch in batches)
            files = file_rows(
                completed, writer.rows_per_file, output.max_held_bytes, every_s, labelled=labelled
            )
        for rows in files:
            yield from writer(rows).to_pylist()
