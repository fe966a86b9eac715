"""The Ray Data wiring: manifest blocks -> decode actors -> inference actors -> Parquet sink.

`prepare_job` checks everything that can be checked before any work (config, checkpoint, labels,
manifest) and raises `ConfigError`/`CheckpointError`; `run_job` then runs the pipeline and writes
the run report.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import platform
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vivit_batch import storage
from vivit_batch.config import ConfigError, JobConfig, require_job_inputs
from vivit_batch.incremental import (
    EMPTY_IDS,
    all_ids,
    committed_columns,
    relabel_candidates,
    select_relabelled,
    without,
)
from vivit_batch.lock import OutputLock
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
from vivit_batch.model import CheckpointInfo, VivitConfig, inspect_pretrained
from vivit_batch.processor import ProcessorConfig
from vivit_batch.sink import (
    RESERVED_COLUMNS,
    ParquetSink,
    archive_version,
    committed_files,
    output_schema,
    read_identity,
    withdraw,
    write_identity,
    write_run_report,
)
from vivit_batch.sources import with_versions
from vivit_batch.stages import DecodeSettings, DecodeStage, InferenceSettings, InferenceStage
from vivit_batch.video import DecodeLimits, SamplingConfig

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


@dataclass
class RunResult:
    run_id: str
    report: dict
    report_uri: str
    error_fraction: float
    within_error_budget: bool


def prepare_job(config: JobConfig) -> PreparedJob:
    """Everything checked before any work: raises ConfigError or CheckpointError."""
    require_job_inputs(config)
    checkpoint, model_config = inspect_pretrained(config.model.source, config.model.revision)
    sampling = SamplingConfig(
        num_frames=config.sampling.num_frames or model_config.num_frames,
        frame_sample_rate=config.sampling.frame_sample_rate,
        temporal_views=config.sampling.temporal_views,
        num_temporal_views=config.sampling.num_temporal_views,
        spatial_crops=config.sampling.spatial_crops,
        seed=config.sampling.seed,
    )
    limits = DecodeLimits(
        max_pixels=config.decode.max_pixels,
        max_duration_s=config.decode.max_duration_s,
        max_file_bytes=config.decode.max_file_bytes,
        timeout_s=config.decode.timeout_s,
        max_frames_per_clip=config.decode.max_frames_per_clip,
    )
    options = storage_options(config)
    decode = DecodeSettings(
        sampling,
        processor_for(config, checkpoint.processor),
        limits,
        threads=config.decode.threads,
        storage_options=options,
        isolation=config.decode.isolation,
        crash_retries=config.decode.crash_retries,
        max_memory_bytes=config.decode.max_memory_bytes,
    )
    labels = read_labels(config.model.labels, model_config.num_labels, options)
    manifest = ray.get(_scan_manifest_task.remote(config.manifest, RESERVED_COLUMNS, options))
    if manifest.problems:
        raise ConfigError("\n".join(manifest.problems))
    job = PreparedJob(
        config, checkpoint, model_config, decode, labels or model_config.id2label, manifest
    )
    check_identity(job, read_identity(config.output.uri, job.decode.storage_options))
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

    Without GPUs, torch gets half the cores and decoding the other half. With GPUs, one
    inference actor per GPU, and decoding on the CPU-only nodes if there are any (else on the
    GPU nodes' spare cores). The pools' CPU reservations are scaled to leave
    RAY_DATA_HEADROOM_CPUS free for Ray Data's own tasks.
    """
    cluster = ray.cluster_resources()
    cpus, gpus = int(cluster.get("CPU", 1)), int(cluster.get("GPU", 0))
    r = config.resources
    decode_threads = config.decode.threads
    inference_actors = r.inference_actors or max(1, gpus)
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
        inference_gpus=1.0 if gpus else 0.0,
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
    dataset = manifest_with_ids(job, skip).map_batches(
        with_versions,
        fn_kwargs={"options": job.decode.storage_options},
        batch_format="pyarrow",
        **LIGHT_TASK,
    )
    dataset = dataset.map_batches(
        DecodeStage,
        fn_constructor_kwargs={"settings": replace(job.decode, threads=resources.decode_threads)},
        compute=ray.data.ActorPoolStrategy(size=resources.decode_actors),
        num_cpus=resources.decode_cpus,
        ray_remote_args_fn=placement_on(resources.decode_nodes),
        batch_size=config.resources.decode_batch_size,
        batch_format="pyarrow",
    )
    return dataset.map_batches(
        InferenceStage,
        fn_constructor_kwargs={
            "settings": inference_settings(job, run_id, resources.inference_threads)
        },
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
    return pa.compute.unique(all_ids(ray.get(selected.to_arrow_refs())))


def partition_values(partition_by: tuple[str, ...], started: float) -> dict[str, str]:
    run_date = datetime.fromtimestamp(started, timezone.utc).date().isoformat()
    return {name: {"run_date": run_date}[name] for name in partition_by}


def inference_settings(
    job: PreparedJob, run_id: str, torch_threads: int | None
) -> InferenceSettings:
    config = job.config
    return InferenceSettings(
        model_source=config.model.source,
        revision=config.model.revision,
        processor=job.decode.processor,
        run_id=run_id,
        top_k=config.model.top_k,
        labels=job.labels,
        precision=config.model.precision,
        clips_per_forward=config.resources.clips_per_forward,
        torch_threads=torch_threads,
    )


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
    dataset = read_manifest_dataset(job.config).limit(count)
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    return with_ids(table, base_directory(job.config.manifest, job.decode.storage_options))


def run_job(job: PreparedJob) -> RunResult:
    config = job.config
    run_id = config.run.run_id or new_run_id()
    resources = plan_resources(config)
    log.info("run %s: %d videos, %s", run_id, job.manifest.rows, resources)
    options = job.decode.storage_options
    started = time.time()
    with OutputLock(config.output.uri, run_id, options, config.run.lock_stale_after_s):
        # Read under the lock: what is committed cannot change until this run is done.
        recorded = read_identity(config.output.uri, options)
        if identity_differences(recorded, job.identity):
            check_identity(job, recorded)  # another run changed it since prepare_job
            archived = archive_version(config.output.uri, options, recorded)
            log.info("the output's previous version is now under %s", archived)
        columns = committed_columns(config.run.refresh_changed)
        committed = committed_files(config.output.uri, options, columns)
        relabel = ids_to_relabel(job, committed)
        withdrawn = withdraw(config.output.uri, options, committed, relabel)
        write_identity(config.output.uri, options, job.identity)
        sink = ParquetSink(
            config.output.uri,
            run_id,
            output_schema(job.model_config.hidden_size, job.partition_by),
            config.output.rows_per_file,
            options,
            partition_values=partition_values(job.partition_by, started),
        )
        skip = without(all_ids(committed.values()), relabel)
        dataset = build_dataset(job, resources, run_id, skip)
        dataset.write_datasink(sink, ray_remote_args=LIGHT_TASK)
    wall = time.time() - started
    stats = sink.stats
    errors = stats.status.get("error", 0)
    error_fraction = errors / stats.rows if stats.rows else 0.0
    report = {
        "run_id": run_id,
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "wall_seconds": round(wall, 3),
        "config": config.to_dict(),
        "model": {
            "source": config.model.source,
            "revision": config.model.revision,
            "weights_sha256": job.checkpoint.weights_sha256,
        },
        "manifest_rows": job.manifest.rows,
        "rows_written": stats.rows,
        "mode": config.run.mode,
        "skipped_committed": job.manifest.rows - stats.rows,
        "rows_replaced": withdrawn,
        "counts": {"status": dict(stats.status), "error_code": dict(stats.error_codes)},
        "error_fraction": error_fraction,
        "max_error_fraction": config.run.max_error_fraction,
        "throughput": throughput(stats, resources, wall),
        "resources": vars(resources),
        "files": stats.files,
        "versions": versions(),
    }
    report_uri = write_run_report(config.output.uri, run_id, report, options)
    return RunResult(
        run_id, report, report_uri, error_fraction, error_fraction <= config.run.max_error_fraction
    )


def throughput(stats, resources: Resources, wall: float) -> dict:
    """Clips per second end to end, and per stage from the time its actors were busy."""

    def per_second(busy_seconds: float, actors: int) -> float | None:
        return round(stats.clips * actors / busy_seconds, 3) if busy_seconds else None

    return {
        "clips": stats.clips,
        "clips_per_second": round(stats.clips / wall, 3) if wall else None,
        "decode_clips_per_second": per_second(stats.decode_seconds, resources.decode_actors),
        "inference_clips_per_second": per_second(
            stats.inference_seconds, resources.inference_actors
        ),
        "bytes_read": stats.bytes_read,
        "bytes_read_per_video": round(stats.bytes_read / stats.rows) if stats.rows else None,
    }


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
