"""The scale benchmark's inputs, generated without decoding anything (vectorised with numpy and
pyarrow: no Python loop per row).

- Videos: `VIDEOS` tiny H.264 files (`testing.media.write_video`, 64x48, 30 fps, 30 to 33
  frames), which every manifest row points at, round robin, under its own video_id.
- The checkpoint: the tiny test model (`testing.checkpoints.make_checkpoint`, hidden size 32,
  5 classes); the generated rows are "this model's" (the identity `prepare_job` computes for it
  is written to the output), so `vivit-batch run --model CHECKPOINT` accepts the output.
- A manifest: one Parquet file with the columns `video_id` and `uri`, written in row groups of
  `ROW_GROUP` rows; row i has id `v` + i in `ID_DIGITS` zero-padded digits and the absolute path
  of video i % `VIDEOS`. Rows 0..N-1 are the committed ones; a manifest with 1% new videos
  appends rows N..1.01N (the nightly case: new videos at the end).
- An output of rows 0..N-1 committed as one run (`GENERATED_RUN`) through the project's write
  path, as a run commits: the output's lock taken (`Output.lock`), worker processes stage files
  of at most `output.rows_per_file` rows with `FileWriter` (what a run stages files with), and
  this process commits each under the lock with `RunWriter` (the run's driver), which also
  writes the identity first and the run report last. Every `ERROR_EVERY`-th row is an error row
  (`decode_error`); the others are labelled: label i % classes, top-k ranked from it, random
  scores and embeddings, the video's metadata and source version (`source_version` of its
  file), `processed_at` the generation's start.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vivit_batch.config import OutputSection, RunSection
from vivit_batch.output import ErrorBudget, FileWriter, Output, RunReport, RunWriter, output_schema
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    VIEWS,
    embedding_type,
)
from vivit_batch.output.sink import NOTHING_RELABELLED
from vivit_batch.source_versions import source_version

VIDEOS = 4
WIDTH, HEIGHT, FPS = 64, 48, 30
FIRST_VIDEO_FRAMES = 30
ID_DIGITS = 10
ROW_GROUP = 1_000_000
ERROR_EVERY = 200
ERROR_CODE = "decode_error"
GENERATED_RUN = "generated"
CHUNK_FILES = 10
"""files each worker process stages per task"""


@dataclass(frozen=True)
class Video:
    uri: str
    num_frames: int
    version: dict
    """`source_version` of the file: what a run records in the row's version columns"""


@dataclass(frozen=True)
class Model:
    """What the generated rows say labelled them: the tiny checkpoint, as a run sees it."""

    source: str
    identity: dict
    """what a run writes to `_dataset.json` (`PreparedJob.identity`)"""
    hidden: int
    labels: tuple[str, ...]
    top_k: int

    @property
    def weights_sha256(self) -> str:
        return self.identity["weights_sha256"]


def make_shared_inputs(directory: Path) -> tuple[Path, list[Video]]:
    """The tiny checkpoint and the videos, under `directory`."""
    from vivit_batch.testing.checkpoints import make_checkpoint
    from vivit_batch.testing.media import write_video

    checkpoint = directory / "checkpoint"
    make_checkpoint(checkpoint)
    videos = []
    for index in range(VIDEOS):
        frames = FIRST_VIDEO_FRAMES + index
        path = write_video(
            directory / f"video{index}.mp4", num_frames=frames, width=WIDTH, height=HEIGHT, fps=FPS
        )
        uri = str(path.resolve())
        videos.append(Video(uri, frames, source_version(uri, None)))
    return checkpoint, videos


def model_of(checkpoint: Path, videos: list[Video], output: Path) -> Model:
    """The tiny checkpoint as `vivit-batch run --model CHECKPOINT --output OUTPUT` sees it
    (`prepare_job` over a one-row manifest: the identity does not depend on the manifest)."""
    from vivit_batch.config import load_config
    from vivit_batch.job import prepare_job

    manifest = output.parent / "one-row.parquet"
    write_manifest(manifest, videos, 1)
    job = prepare_job(
        load_config(
            None,
            [],
            manifest_uri=str(manifest),
            output_uri=str(output),
            model_source=str(checkpoint),
        )
    )
    manifest.unlink()
    labels = tuple(job.labels[i] for i in range(len(job.labels)))
    return Model(
        str(checkpoint), job.identity, job.model_config.hidden_size, labels, job.config.model.top_k
    )


# ------------------------------------------------------------------------------- manifests


def video_ids(first: int, count: int) -> pa.Array:
    numbers = pc.cast(pa.array(np.arange(first, first + count)), pa.string())
    return pc.binary_join_element_wise("v", pc.utf8_lpad(numbers, ID_DIGITS, "0"), "")


def video_index(first: int, count: int) -> np.ndarray:
    return np.arange(first, first + count) % VIDEOS


def write_manifest(path: Path, videos: list[Video], rows: int) -> Path:
    """Manifest rows 0..rows-1 (see the module's docstring)."""
    uris = pa.array([video.uri for video in videos])
    schema = pa.schema([("video_id", pa.string()), ("uri", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, rows, ROW_GROUP):
            count = min(ROW_GROUP, rows - first)
            table = pa.table(
                [video_ids(first, count), uris.take(video_index(first, count))], schema=schema
            )
            writer.write_table(table)
    return path


# ---------------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Generated:
    rows: int
    files: int
    errors: int
    seconds: float


def commit_output(
    uri: str, model: Model, videos: list[Video], rows: int, workers: int
) -> Generated:
    """Commit manifest rows 0..rows-1 into a new output at `uri` (see the module's docstring)."""
    started = time.time()
    output = Output(uri)
    rows_per_file = OutputSection().rows_per_file
    files = FileWriter(output, GENERATED_RUN, output_schema(model.hidden), rows_per_file)
    chunk = rows_per_file * CHUNK_FILES
    tasks = [
        (files, model, videos, first, min(chunk, rows - first), started)
        for first in range(0, rows, chunk)
    ]
    context = multiprocessing.get_context("spawn")  # the lock's heartbeat thread is not forked
    with output.lock(GENERATED_RUN, RunSection().lock_stale_after_s) as lock:
        writer = RunWriter(output, lock, files, model.identity, NOTHING_RELABELLED)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for staged_files in pool.map(stage_rows, *zip(*tasks, strict=True)):
                for staged in staged_files:
                    writer.commit(staged)
        writer.finish(generation_report(writer, model, rows, started))
    return Generated(
        rows, len(writer.stats.files), writer.stats.status["error"], time.time() - started
    )


def stage_rows(
    files: FileWriter, model: Model, videos: list[Video], first: int, count: int, started: float
) -> list[dict]:
    """In a worker process: stage the files of rows first..first+count-1, as a write task."""
    return files(labelled_rows(model, videos, first, count, started)).to_pylist()


def generation_report(writer: RunWriter, model: Model, rows: int, started: float) -> RunReport:
    stats = writer.stats
    return RunReport(
        run_id=GENERATED_RUN,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(),
        wall_seconds=round(time.time() - started, 3),
        manifest_rows=rows,
        rows_written=stats.rows,
        videos_written=stats.videos,
        counts={"status": dict(stats.status), "error_code": dict(stats.error_codes)},
        error_budget=ErrorBudget(
            manifest_rows=rows,
            errors_this_run=stats.status["error"],
            max_error_fraction=RunSection().max_error_fraction,
        ),
        files=stats.files,
        config={"generated_by": "benchmarks.scale", "model": model.source},
    )


def labelled_rows(
    model: Model, videos: list[Video], first: int, count: int, started: float
) -> pa.Table:
    """Rows first..first+count-1 as the inference stage hands them to the sink."""
    rng = np.random.default_rng(first)
    number = np.arange(first, first + count)
    error = number % ERROR_EVERY == ERROR_EVERY - 1
    which = video_index(first, count)
    classes = len(model.labels)
    k = min(model.top_k, classes)
    top = (number[:, None] + np.arange(k)[None, :]) % classes
    scores = -np.sort(-rng.dirichlet(np.ones(classes), size=count)[:, :k], axis=1)
    labels = pa.array(model.labels)
    columns = {
        "video_id": video_ids(first, count),
        "uri": pa.array([video.uri for video in videos]).take(which),
        "status": pa.array(np.where(error, "error", "ok")),
        "error_code": pa.array(np.full(count, ERROR_CODE), mask=~error),
        "error_message": pa.array(np.full(count, "generated error row"), mask=~error),
        "label": labels.take(pa.array(top[:, 0], mask=error)),
        "label_id": pa.array(top[:, 0], pa.int32(), mask=error),
        "score": pa.array(scores[:, 0], pa.float32(), mask=error),
        "topk_labels": ranked(labels.take(pa.array(top.ravel())), k, error),
        "topk_ids": ranked(pa.array(top.ravel(), pa.int32()), k, error),
        "topk_scores": ranked(pa.array(scores.ravel(), pa.float32()), k, error),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.standard_normal(count * model.hidden, dtype=np.float32)),
            type=embedding_type(model.hidden),
            mask=pa.array(error),
        ),
        **video_columns(videos, which, error),
        "model": pa.array(np.full(count, model.source)),
        "model_sha256": pa.array(np.full(count, model.weights_sha256)),
        "run_id": pa.array(np.full(count, GENERATED_RUN)),
        "processed_at": pa.array(np.full(count, int(started * 1e6)), pa.timestamp("us", tz="UTC")),
        VIEWS: pa.array(np.where(error, 0, 1), pa.int32()),
        DECODE_SECONDS: pa.array(np.zeros(count)),
        DECODED_ON_NVDEC: pa.array([False] * count),
        INFERENCE_SECONDS: pa.array(np.zeros(count)),
        BYTES_READ: pa.array(np.zeros(count, np.int64)),
        INFERENCE_DEVICE: pa.array(np.full(count, '{"device": "cpu"}')),
    }
    return pa.table(columns)


def ranked(values: pa.Array, k: int, error: np.ndarray) -> pa.Array:
    """`values` (k per row) as one list per row, null on error rows."""
    offsets = pa.array(np.arange(0, len(values) + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(error))


def video_columns(videos: list[Video], which: np.ndarray, error: np.ndarray) -> dict:
    """Each row's video metadata (null on error rows) and source version."""
    fps = float(FPS)
    frames = np.array([video.num_frames for video in videos])[which]
    duration = frames / fps
    versions = {
        name: pa.array([video.version[name] for video in videos]).take(which)
        for name in ("source_size", "source_modified", "source_etag")
    }
    metadata = {
        "duration_s": pa.array(duration, mask=error),
        "fps": pa.array(np.full(len(which), fps), mask=error),
        "width": pa.array(np.full(len(which), WIDTH), pa.int32(), mask=error),
        "height": pa.array(np.full(len(which), HEIGHT), pa.int32(), mask=error),
        "num_frames": pa.array(frames, pa.int64(), mask=error),
        "clip_start_s": pa.array(np.zeros(len(which)), mask=error),
        "clip_end_s": pa.array(duration, mask=error),
    }
    return metadata | versions
