"""The Ray Data wiring: manifest blocks -> decode actors -> inference actors -> Parquet sink.

`prepare_job` checks everything that can be checked before any work (config, checkpoint, labels,
manifest) and raises `ConfigError`/`CheckpointError`; `run_job` then runs the pipeline and writes
the run report.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import platform
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vivit_batch import storage
from vivit_batch.config import ConfigError, JobConfig, RunSection, require_job_inputs
from vivit_batch.device import CPU, CUDA
from vivit_batch.incremental import (
    EMPTY_IDS,
    all_ids,
    committed_columns,
    count_listed,
    error_ids,
    relabel_candidates,
    select_relabelled,
    without,
)
from vivit_batch.manifest import (
    CSV_CONVERT,
    ManifestSummary,
    base_directory,
    drop_blank_lines,
    list_videos,
    manifest_format,
    scan_manifest,
    with_ids,
)
from vivit_batch.model import CheckpointError, CheckpointInfo, VivitConfig, inspect_pretrained
from vivit_batch.output import (
    RESERVED_COLUMNS,
    ErrorBudget,
    FileWriter,
    LockLost,
    ModelUsed,
    Output,
    RunReport,
    Throughput,
    Unlocked,
    WriteStats,
    commit_staged,
    output_schema,
)
from vivit_batch.output.dataset import Fence
from vivit_batch.processor import ProcessorConfig
from vivit_batch.sources import with_versions
from vivit_batch.stages import DecodeSettings, DecodeStage, InferenceSettings, InferenceStage

log = logging.getLogger("vivit_batch")

# Reading the manifest, assigning ids and writing Parquet are light and short: they take no CPU
# slot, so the decode and inference pools can have all of them.
LIGHT_TASK = {"num_cpus": 0}
# Some Ray Data steps (listing files for read_parquet) always ask for a whole CPU; the actor pools
# leave this much unclaimed so they can run.
RAY_DATA_HEADROOM_CPUS = 1.0


@dataclass
class PreparedJob:
    config: JobConfig
    checkpoint: CheckpointInfo
    model_config: VivitConfig
    decode: DecodeSettings
    labels: dict[int, str]
    manifest: ManifestSummary

    @property
    def partition_by(self) -> tuple[str, ...]:
        partition = self.config.output.partition_by
        return (partition,) if partition else ()

    @property
    def identity(self) -> dict:
        """What makes rows comparable (the weights and the preprocessing), and the layout."""
        return {
            "model_source": self.config.model.source,
            "weights_sha256": self.checkpoint.weights_sha256,
            "preprocessing": self.decode.processor.to_dict(),
            "sampling": dataclasses.asdict(self.decode.sampling),
            "partition_by": list(self.partition_by),
        }


@dataclass
class Resources:
    """The actor pools. Threads are what the actors run; CPUs what they reserve in Ray."""

    decode_actors: int
    decode_threads: int
    decode_cpus: float
    inference_actors: int
    inference_threads: int
    inference_cpus: float
    inference_gpus: float
    decode_nodes: list[str] = dataclasses.field(default_factory=list)
    """CPU-only nodes that decode actors are placed on (when the cluster has GPU nodes)"""

    @property
    def inference_device(self) -> str:
        return CUDA if self.inference_gpus else CPU

    def describe(self) -> str:
        inference = (
            f"{self.inference_gpus:g} GPU ({CUDA}) + {self.inference_cpus:g} CPU"
            if self.inference_gpus
            else f"{self.inference_cpus:g} CPU ({CPU}, {self.inference_threads} torch threads)"
        )
        nodes = f" on CPU-only nodes {', '.join(self.decode_nodes)}" if self.decode_nodes else ""
        return (
            f"{self.inference_actors} inference actor(s), each {inference}; "
            f"{self.decode_actors} decode actor(s), each {self.decode_cpus:.2g} CPU with "
            f"{self.decode_threads} PyAV thread(s){nodes}"
        )


@dataclass
class Work:
    """What a run into an existing output does with the videos it already holds."""

    skip: pa.Array
    """committed ids the run leaves as they are"""
    withdrawn: int = 0
    """committed rows taken out because the run labels their videos again"""
    errors_kept: int = 0
    """the manifest's videos whose committed error row the run leaves in place"""


def prepare_job(config: JobConfig) -> PreparedJob:
    """Everything checked before any work: raises ConfigError or CheckpointError."""
    require_job_inputs(config)
    checkpoint, model_config = inspect_pretrained(config.model.source, config.model.revision)
    sampling = config.sampling
    if sampling.num_frames is None:
        sampling = replace(sampling, num_frames=model_config.num_frames)
    processor = processor_for(config, checkpoint.processor)
    if sampling.spatial_crops == "three" and not processor.do_center_crop:
        raise ConfigError(
            f"sampling.spatial_crops=three needs a crop size, and model {config.model.source}'s "
            "preprocessor_config.json has no center crop: use sampling.spatial_crops=center"
        )
    options = storage_options(config)
    decode = DecodeSettings(sampling, processor, config.decode, options)
    labels = read_labels(config.model.labels, model_config.num_labels, options)
    manifest = ray.get(_scan_manifest_task.remote(config.manifest, RESERVED_COLUMNS, options))
    if manifest.problems:
        raise ConfigError("\n".join(manifest.problems))
    job = PreparedJob(
        config, checkpoint, model_config, decode, labels or model_config.id2label, manifest
    )
    check_identity(job, Output(config.output.uri, options).read_identity())
    return job


def check_identity(job: PreparedJob, recorded: dict | None) -> None:
    """One model, preprocessing and layout per output dataset: refuse to mix rows from another
    (`recorded`, the output's identity), unless this run starts a new version of the dataset
    (`run.new_version`)."""
    current = job.identity
    differ = identity_differences(recorded, current)
    if not differ or job.config.run.new_version:
        return
    raise ConfigError(
        f"output {job.config.output.uri} holds rows from model {recorded['model_source']} "
        f"(weights sha256 {recorded['weights_sha256'][:12]}, partition_by "
        f"{recorded.get('partition_by', [])}); this run's {' and '.join(differ)} differ (model "
        f"{current['model_source']}, weights sha256 {current['weights_sha256'][:12]}, "
        f"partition_by {current['partition_by']}). Rows from different models, preprocessing or "
        "layouts must not share a dataset: write this run to a new output, or pass "
        "--new-version to move the current rows aside (under _versions/) and relabel the "
        "manifest into this output"
    )


def identity_differences(recorded: dict | None, current: dict) -> list[str]:
    """The keys of the dataset identity in which `current` differs from `recorded`."""
    if recorded is None:
        return []
    recorded = {"partition_by": [], **recorded}  # outputs written before partitioning existed
    keys = ("weights_sha256", "preprocessing", "sampling", "partition_by")
    return [key for key in keys if recorded.get(key) != current[key]]


def processor_for(config: JobConfig, processor: ProcessorConfig) -> ProcessorConfig:
    if config.model.normalization == "scenic":
        return replace(
            processor, do_rescale=True, rescale_factor=1 / 127.5, offset=True, do_normalize=False
        )
    return processor


def storage_options(config: JobConfig) -> dict:
    return storage.storage_options(**dataclasses.asdict(config.storage))


def read_labels(path: str | None, num_labels: int, options: dict) -> dict[int, str] | None:
    """Class names from a file: one per line in id order, or a JSON object {id: name}."""
    if not path:
        return None
    try:
        filesystem, file = storage.filesystem(path, options)
        with filesystem.open(file, "r") as stream:
            text = stream.read()
    except FileNotFoundError as error:
        raise ConfigError(f"model.labels: {path} does not exist") from error
    if path.endswith(".json"):
        labels = {int(k): str(v) for k, v in json.loads(text).items()}
    else:
        labels = dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))
    if sorted(labels) != list(range(num_labels)):
        raise ConfigError(
            f"model.labels: {path} names {len(labels)} classes, the model has {num_labels}"
        )
    return labels


@ray.remote(**LIGHT_TASK)
def _scan_manifest_task(section, reserved, options) -> ManifestSummary:
    return scan_manifest(section, reserved, options)


def plan_resources(config: JobConfig) -> Resources:
    """Actor pools from the cluster's resources; explicit settings win.

    Without GPUs for inference (none in the cluster, or `resources.inference_gpus=0`), torch
    gets half the cores and decoding the other half. With GPUs, one inference actor per GPU (or
    per `inference_gpus` of one), and decoding on the CPU-only nodes if there are any (else on
    the GPU nodes' spare cores). The pools' CPU reservations are scaled to leave
    RAY_DATA_HEADROOM_CPUS free for Ray Data's own tasks.
    """
    cluster = ray.cluster_resources()
    cpus, cluster_gpus = int(cluster.get("CPU", 1)), cluster.get("GPU", 0)
    r = config.resources
    default_gpus = 1.0 if cluster_gpus else 0.0
    gpus_per_actor = default_gpus if r.inference_gpus is None else r.inference_gpus
    gpus = gpus_per_actor > 0
    decode_threads = config.decode.threads
    inference_actors = r.inference_actors or (
        max(1, int(cluster_gpus / gpus_per_actor)) if gpus else 1
    )
    inference_threads = 1 if gpus else r.inference_cpus or max(1, cpus // 2)
    inference_total = inference_actors * inference_threads
    cpu_nodes = cpu_only_nodes() if gpus else {}
    decode_pool_cpus = sum(cpu_nodes.values()) or cpus - inference_total
    decode_actors = r.decode_actors or max(1, int(decode_pool_cpus // decode_threads))
    budget = cpus - RAY_DATA_HEADROOM_CPUS
    if gpus:  # GPU actors keep a whole CPU each
        inference_scale = 1.0
        decode_budget = min(decode_pool_cpus, budget - inference_total)
        decode_scale = decode_budget / (decode_actors * decode_threads)
    else:
        inference_scale = decode_scale = budget / (inference_total + decode_actors * decode_threads)
    return Resources(
        decode_actors=decode_actors,
        decode_threads=decode_threads,
        decode_cpus=decode_threads * min(1.0, max(0.1, decode_scale)),
        inference_actors=inference_actors,
        inference_threads=inference_threads,
        inference_cpus=inference_threads * min(1.0, max(0.1, inference_scale)),
        inference_gpus=float(gpus_per_actor),
        decode_nodes=sorted(cpu_nodes),
    )


def cpu_only_nodes() -> dict[str, float]:
    """Alive nodes with CPUs and no GPU: node id -> CPUs."""
    return {
        node["NodeID"]: node["Resources"]["CPU"]
        for node in ray.nodes()
        if node["Alive"] and node["Resources"].get("CPU") and not node["Resources"].get("GPU")
    }


def placement_on(nodes: list[str]):
    """Ray remote args that spread successive actors over `nodes` (soft: they may go elsewhere
    when those nodes are full); None when there is nothing to steer."""
    if not nodes:
        return None
    cycle = itertools.cycle(nodes)
    return lambda: {"scheduling_strategy": NodeAffinitySchedulingStrategy(next(cycle), soft=True)}


def build_dataset(
    job: PreparedJob, resources: Resources, run_id: str, skip: pa.Array | None = None
) -> ray.data.Dataset:
    """The pipeline; videos whose ids are in `skip` are left out."""
    config = job.config
    # A stage's exception reaches the driver as itself (an inference actor's refusal must end
    # the run with exit code 2), not as Ray Data's wrapper. Datasets copy the context when they
    # are made, so this comes first.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    dataset = manifest_with_ids(job, skip).map_batches(
        with_versions,
        fn_kwargs={"options": job.decode.storage_options},
        batch_format="pyarrow",
        **LIGHT_TASK,
    )
    dataset = dataset.map_batches(
        DecodeStage,
        fn_constructor_kwargs={"settings": job.decode},
        compute=ray.data.ActorPoolStrategy(size=resources.decode_actors),
        num_cpus=resources.decode_cpus,
        ray_remote_args_fn=placement_on(resources.decode_nodes),
        batch_size=config.resources.decode_batch_size,
        batch_format="pyarrow",
    )
    return dataset.map_batches(
        InferenceStage,
        fn_constructor_kwargs={"settings": inference_settings(job, run_id, resources)},
        compute=ray.data.ActorPoolStrategy(size=resources.inference_actors),
        num_cpus=resources.inference_cpus,
        num_gpus=resources.inference_gpus,
        batch_size=config.resources.batch_size,
        batch_format="pyarrow",
    )


def ids_to_relabel(job: PreparedJob, committed: dict[str, pa.Table]) -> pa.Array:
    """Committed videos of this manifest that this run labels again (see `incremental`)."""
    config = job.config
    if not committed:
        return EMPTY_IDS
    rows = pa.concat_tables(committed.values())
    candidates = relabel_candidates(rows, config.run.mode)
    if not len(candidates) and not config.run.refresh_changed:
        return EMPTY_IDS
    options = job.decode.storage_options
    selected = manifest_with_ids(job).map_batches(
        select_relabelled,
        fn_kwargs={
            "candidates": candidates,
            "recorded": rows if config.run.refresh_changed else None,
            "options": options,
        },
        batch_format="pyarrow",
        **LIGHT_TASK,
    )
    return pa.compute.unique(all_ids(_tables(selected)))


def _tables(dataset: ray.data.Dataset) -> list[pa.Table]:
    return ray.get(dataset.to_arrow_refs())


def partition_values(partition_by: tuple[str, ...], started: float) -> dict[str, str]:
    run_date = datetime.fromtimestamp(started, timezone.utc).date().isoformat()
    return {name: {"run_date": run_date}[name] for name in partition_by}


def inference_settings(job: PreparedJob, run_id: str, resources: Resources) -> InferenceSettings:
    config = job.config
    return InferenceSettings(
        model_source=config.model.source,
        revision=job.checkpoint.commit,
        weights_sha256=job.checkpoint.weights_sha256,
        processor=job.decode.processor,
        run_id=run_id,
        top_k=config.model.top_k,
        labels=job.labels,
        precision=config.model.precision,
        clips_per_forward=config.resources.clips_per_forward,
        device=resources.inference_device,
        torch_threads=None if resources.inference_gpus else resources.inference_threads,
    )


def label_on_cluster(job: PreparedJob, resources: Resources, decoded: pa.Table) -> pa.Table:
    """Label `decoded` rows in one inference actor placed as the run would place it (`validate`:
    the device check runs where the run's would)."""
    stage = ray.remote(InferenceStage).options(
        num_cpus=resources.inference_cpus, num_gpus=resources.inference_gpus
    )
    actor = stage.remote(inference_settings(job, "validate", resources))
    try:
        with stage_errors():
            return ray.get(actor.__call__.remote(decoded))
    finally:
        ray.kill(actor)  # now, not when the handle is collected: it may hold a GPU


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """A stage's refusal (a device or checkpoint error: exit code 2) raised as itself, not as
    Ray's wrapper of it."""
    try:
        yield
    except (ConfigError, CheckpointError) as error:
        raise getattr(error, "cause", error) from None


def manifest_with_ids(job: PreparedJob, skip: pa.Array | None = None) -> ray.data.Dataset:
    """The manifest's rows with resolved URIs and ids, less those in `skip`."""
    return read_manifest_dataset(job.config).map_batches(
        with_ids,
        fn_kwargs={
            "base": base_directory(job.config.manifest, job.decode.storage_options),
            "skip": skip,
        },
        batch_format="pyarrow",
        **LIGHT_TASK,
    )


def read_manifest_dataset(config: JobConfig) -> ray.data.Dataset:
    section = config.manifest
    options = storage_options(config)
    fmt = manifest_format(section, options)
    if fmt == "videos":
        return ray.data.from_items([{"uri": u} for u in list_videos(section.uri, options)])
    read = {**LIGHT_TASK, "filesystem": storage.arrow_filesystem(section.uri, options)}
    if fmt == "csv":
        return ray.data.read_csv(section.uri, convert_options=CSV_CONVERT, **read)
    if fmt == "jsonl":
        return ray.data.read_json(section.uri, lines=True, **read)
    if fmt == "parquet":
        return ray.data.read_parquet(section.uri, **read)
    return ray.data.read_text(section.uri, **read).map_batches(
        drop_blank_lines, batch_format="pyarrow", **LIGHT_TASK
    )


def first_rows(job: PreparedJob, count: int) -> pa.Table:
    """The manifest's first `count` rows, with ids, as the decode stage receives them."""
    table = pa.concat_tables(_tables(read_manifest_dataset(job.config).limit(count)))
    return with_ids(table, base_directory(job.config.manifest, job.decode.storage_options))


def run_job(job: PreparedJob) -> RunReport:
    """Label the manifest into the output: lock -> reconcile identity -> choose the work ->
    write -> report. Raises `LockLost` if another run takes the output over meanwhile."""
    config = job.config
    run_id = config.run.run_id or new_run_id()
    resources = plan_resources(config)
    log.info("run %s: %d videos, %s", run_id, job.manifest.rows, resources)
    output = Output(config.output.uri, job.decode.storage_options)
    started = time.time()
    with holding_lock(output, run_id, config.run) as lock:
        output.clear_staging()
        output.hide_legacy_archives(lock)
        reconcile_identity(job, output, lock)
        work = choose_work(job, output, lock)
        dataset = build_dataset(job, resources, run_id, work.skip)
        stats = write_rows(job, output, lock, dataset, run_id, started)
        report = run_report(job, run_id, started, work, stats, resources, lock)
        output.write_report(report, lock)
        output.clear_staging()
    return report


@contextlib.contextmanager
def holding_lock(output: Output, run_id: str, run: RunSection) -> Iterator[Fence]:
    """The output's lock for the block; a lost lock interrupts the block (from the heartbeat
    thread) and ends it with `LockLost`."""
    if run.locking == "none":
        log.warning("run.locking=none: no lock; nothing stops another run writing %s", output.uri)
        yield Unlocked()
        return
    lock = output.lock(run_id, run.lock_stale_after_s, run.lock_wait_s, _interrupt_main_thread)
    with lock:
        try:
            yield lock
        except KeyboardInterrupt:
            if lock.lost:
                raise LockLost(lock.lost) from None
            raise


def _interrupt_main_thread(reason: str) -> None:
    """Stop the run's main thread at once when the heartbeat thread finds the lock lost (the
    commits would refuse anyway, but decoding and labelling would go on)."""
    if threading.current_thread() is not threading.main_thread():
        _thread.interrupt_main()


def reconcile_identity(job: PreparedJob, output: Output, lock: Fence) -> None:
    """Read under the lock: another run may have changed the identity since `prepare_job`."""
    recorded = output.read_identity()
    if identity_differences(recorded, job.identity):
        check_identity(job, recorded)
        archived = output.archive(recorded, lock)
        log.info("the output's previous version is now under %s", archived)
    output.write_identity(job.identity, lock)


def choose_work(job: PreparedJob, output: Output, lock: Fence) -> Work:
    """Which committed videos the run skips; the rows of those it relabels are withdrawn."""
    committed = output.committed(committed_columns(job.config.run.refresh_changed))
    relabel = ids_to_relabel(job, committed)
    withdrawn = output.withdraw(committed, relabel, lock)
    kept_errors = without(error_ids(committed.values()), relabel)
    return Work(
        skip=without(all_ids(committed.values()), relabel),
        withdrawn=withdrawn,
        errors_kept=count_in_manifest(job, kept_errors),
    )


def count_in_manifest(job: PreparedJob, ids: pa.Array) -> int:
    """How many of the manifest's rows have one of `ids` (one pass over the manifest)."""
    if not len(ids):
        return 0
    counts = manifest_with_ids(job).map_batches(
        count_listed, fn_kwargs={"ids": ids}, batch_format="pyarrow", **LIGHT_TASK
    )
    return sum(int(pa.compute.sum(t["count"]).as_py() or 0) for t in _tables(counts))


def write_rows(
    job: PreparedJob,
    output: Output,
    lock: Fence,
    dataset: ray.data.Dataset,
    run_id: str,
    started: float,
) -> WriteStats:
    """Write tasks stage the labelled rows as files; this process commits each one."""
    config = job.config
    writer = FileWriter(
        output,
        run_id,
        output_schema(job.model_config.hidden_size, job.partition_by),
        config.output.rows_per_file,
        partition_values(job.partition_by, started),
    )
    staged = dataset.map_batches(
        writer, batch_size=config.output.rows_per_file, batch_format="pyarrow", **LIGHT_TASK
    )
    stats = WriteStats()
    with stage_errors():
        for batch in staged.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                stats.add(commit_staged(output, lock, row))
    return stats


def run_report(
    job: PreparedJob,
    run_id: str,
    started: float,
    work: Work,
    stats: WriteStats,
    resources: Resources,
    lock: Fence,
) -> RunReport:
    config = job.config
    wall = time.time() - started
    devices = [json.loads(record) for record in stats.devices]
    return RunReport(
        run_id=run_id,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(),
        wall_seconds=round(wall, 3),
        mode=config.run.mode,
        model=ModelUsed(
            source=config.model.source,
            revision=config.model.revision,
            commit=job.checkpoint.commit,
            weights_sha256=job.checkpoint.weights_sha256,
        ),
        manifest_rows=job.manifest.rows,
        rows_written=stats.rows,
        skipped_committed=job.manifest.rows - stats.rows,
        rows_replaced=work.withdrawn,
        counts={"status": dict(stats.status), "error_code": dict(stats.error_codes)},
        error_budget=ErrorBudget(
            manifest_rows=job.manifest.rows,
            errors_this_run=stats.status.get("error", 0),
            errors_kept=work.errors_kept,
            max_error_fraction=config.run.max_error_fraction,
        ),
        throughput=Throughput.of(stats, wall, resources.decode_actors, resources.inference_actors),
        inference_devices=devices,
        warnings=[d["warning"] for d in devices if "warning" in d],
        lock_generation=lock.generation,
        resources=vars(resources),
        files=stats.files,
        config=config.to_dict(),
        versions=versions(),
    )


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def versions() -> dict:
    import av
    import torch

    from vivit_batch import __version__

    return {
        "vivit_batch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "av": av.__version__,
        "host": platform.node(),
        "pid": os.getpid(),
    }
