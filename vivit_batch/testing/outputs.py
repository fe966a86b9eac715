"""Outputs for tests and benchmarks, committed through the output's own sink (`FileWriter`,
`commit_staged`): one labelled in this process by the real stages (no Ray), or one whose
embeddings are generated around a centre per class."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vivit_batch.config import JobConfig
from vivit_batch.output import FileWriter, Output, Unlocked, commit_staged, output_schema
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    METADATA_COLUMNS,
    PROVENANCE_COLUMNS,
    VERSION_COLUMNS,
    VIEWS,
    embedding_type,
)
from vivit_batch.storage import job_storage_options

MODEL = "/models/generated"
"""What generated rows say labelled them: a local path that does not exist (no hub look-up)."""
BASE_CLASSES = 7
"""Generated outputs' rows are labelled as if by a model with this many classes (`base_<i>`)."""


def label_in_process(config: JobConfig, run_id: str = "in-process"):
    """Label `config`'s manifest into its output as a run would (same checks, stages, files and
    identity), without Ray: the decode and inference stages run here, on one batch. Returns
    the `PreparedJob`."""
    from vivit_batch.job import ClusterShape, inference_options, plan_resources, prepare_job
    from vivit_batch.job.pipeline import id_options, partition_values
    from vivit_batch.manifest.read import batches, manifest_format, with_ids
    from vivit_batch.source_versions import with_versions
    from vivit_batch.stages.decode import DecodeStage
    from vivit_batch.stages.inference import InferenceStage

    job = prepare_job(config)
    options = job_storage_options(config)
    manifest = config.manifest
    fmt = manifest_format(manifest, options)
    rows = pa.Table.from_batches([b for _, b in batches(manifest.uri, fmt, options)])
    rows = with_versions(with_ids(rows, **id_options(job)), options)
    decoded = DecodeStage(job.decode).decode_all(rows)
    resources = plan_resources(config, ClusterShape(cpus=os.cpu_count() or 1))
    labelled = InferenceStage(inference_options(job, run_id, resources))(decoded)
    output = Output(config.output.uri, options)
    output.write_identity(job.identity, Unlocked())
    schema = output_schema(
        job.model_config.hidden_size, job.partition_by, job.decode.sampling.segments
    )
    partitions = partition_values(job.partition_by, time.time())
    commit(FileWriter(output, run_id, schema, config.output.rows_per_file, partitions), labelled)
    return job


@dataclass(frozen=True)
class Generated:
    """What `write_generated_output` writes: video `i` is of class `classes[i % len(classes)]`,
    its embedding that class's centre plus Gaussian noise of `spread` per dimension."""

    classes: tuple[str, ...]
    videos: int
    hidden: int
    weights_sha256: str
    """what the rows say computed their embeddings"""
    model: str = MODEL
    """the model the output and its rows name (a checkpoint of `weights_sha256` for train-head
    to load without --model)"""
    labelled_every: int = 1
    """video `i` has a truth value (column `manifest_label`) when `i % labelled_every == 0`"""
    errors_every: int = 0
    """video `i` is an error row when `i % errors_every == errors_every - 1` (0: none)"""
    segments: int = 0
    """rows per video in a segments output (0: one row per video)"""
    spread: float = 1.0
    seed: int = 0
    run_id: str = "generated"


def write_generated_output(uri: str, spec: Generated, rows_per_file: int = 5000) -> Output:
    """Commit the rows of `spec` into a new output at `uri`, `rows_per_file` rows (or whole
    videos) at a time, so that memory holds one file's rows whatever the size."""
    output = Output(uri)
    output.write_identity(
        {
            "model_source": spec.model,
            "weights_sha256": spec.weights_sha256,
            "preprocessing": {},
            "sampling": {},
            "partition_by": [],
        },
        Unlocked(),
    )
    rng = np.random.default_rng(spec.seed)
    centres = rng.normal(size=(len(spec.classes), spec.hidden)).astype(np.float32)
    schema = output_schema(spec.hidden, segments=bool(spec.segments))
    writer = FileWriter(output, spec.run_id, schema, rows_per_file)
    per_file = max(1, rows_per_file // max(1, spec.segments))
    for first in range(0, spec.videos, per_file):
        videos = np.arange(first, min(first + per_file, spec.videos))
        commit(writer, generated_rows(spec, videos, centres, rng))
    return output


def generated_rows(
    spec: Generated, videos: np.ndarray, centres: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """The rows of `videos` as the inference stage hands them to the sink."""
    per_video = max(1, spec.segments)
    video = np.repeat(videos, per_video)
    rows = len(video)
    error = (video % spec.errors_every == spec.errors_every - 1) if spec.errors_every else None
    ok = np.ones(rows, bool) if error is None else ~error
    classes = np.asarray(spec.classes, dtype=object)[video % len(spec.classes)]
    noise = rng.normal(scale=spec.spread, size=(rows, spec.hidden)).astype(np.float32)
    embeddings = centres[video % len(spec.classes)] + noise
    scores = rng.dirichlet(np.ones(BASE_CLASSES), size=rows).astype(np.float32)
    top = np.argsort(-scores, axis=1)[:, :5]
    top_scores = np.take_along_axis(scores, top, axis=1)
    columns = {
        "video_id": pa.array([f"video-{v:07d}" for v in video]),
        "uri": pa.array([f"/videos/{v:07d}.mp4" for v in video]),
        **(segment_columns(per_video, rows) if spec.segments else {}),
        "status": pa.array(np.where(ok, "ok", "error")),
        "error_code": pa.array([None if good else "unreadable" for good in ok], pa.string()),
        "error_message": pa.array([None if good else "not a video" for good in ok], pa.string()),
        "label": pa.array([f"base_{i}" for i in top[:, 0]], mask=~ok),
        "label_id": pa.array(top[:, 0], pa.int32(), mask=~ok),
        "score": pa.array(top_scores[:, 0], pa.float32(), mask=~ok),
        "topk_labels": pa.array([[f"base_{i}" for i in row] for row in top], mask=~ok),
        "topk_ids": pa.array(top.tolist(), pa.list_(pa.int32()), mask=~ok),
        "topk_scores": pa.array(top_scores.tolist(), pa.list_(pa.float32()), mask=~ok),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.ravel()), type=embedding_type(spec.hidden), mask=pa.array(~ok)
        ),
        **{
            name: pa.array(np.full(rows, 1.0)).cast(kind) for name, kind in METADATA_COLUMNS.items()
        },
        **{name: pa.nulls(rows, kind) for name, kind in VERSION_COLUMNS.items()},
        "model": pa.array([spec.model] * rows),
        "model_sha256": pa.array([spec.weights_sha256] * rows),
        "run_id": pa.array([spec.run_id] * rows),
        "processed_at": pa.nulls(rows, PROVENANCE_COLUMNS["processed_at"]),
        VIEWS: pa.array(np.where(ok, 1, 0), pa.int32()),
        DECODE_SECONDS: pa.array(np.zeros(rows)),
        DECODED_ON_NVDEC: pa.array([False] * rows),
        INFERENCE_SECONDS: pa.array(np.zeros(rows)),
        BYTES_READ: pa.array(np.zeros(rows, np.int64)),
        INFERENCE_DEVICE: pa.array(['{"device": "cpu"}'] * rows),
        "manifest_label": pa.array(
            np.where(video % spec.labelled_every == 0, classes, None), pa.string()
        ),
    }
    return pa.table(columns)


def segment_columns(per_video: int, rows: int) -> dict[str, pa.Array]:
    index = np.tile(np.arange(per_video), rows // per_video)
    return {
        "segment_index": pa.array(index, pa.int32()),
        "segment_start_s": pa.array(index * 2.0),
        "segment_end_s": pa.array(index * 2.0 + 2.0),
    }


def commit(writer: FileWriter, rows: pa.Table) -> None:
    """Stage `rows` as a run does and commit each file."""
    for staged in writer(rows).to_pylist():
        commit_staged(writer.output, Unlocked(), staged)
