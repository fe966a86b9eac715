"""The two per-batch stages the pipeline runs on actors. Plain Python over pyarrow tables.

`DecodeStage`: manifest rows -> rows with uint8 clips (as bytes) and video metadata, or error rows
(segments mode: a row per segment). `InferenceStage`: those rows -> prediction columns. A bad
video is a row with `status = "error"`, never an exception: an exception would make Ray Data
drop or retry a whole batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from vivit_batch.device import DeviceError, describe, open_device, require_fit
from vivit_batch.inference import VideoClassifier
from vivit_batch.model import CheckpointError, load_pretrained
from vivit_batch.output.schema import (
    BYTES_READ,
    CLIP_SHAPE,
    CLIPS,
    DECODE_SECONDS,
    DECODED_COLUMNS,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    METADATA_COLUMNS,
    PREDICTION_COLUMNS,
    PROVENANCE_COLUMNS,
    SEGMENT_DECODED_COLUMNS,
    SEGMENT_SPAN_COLUMNS,
    SEGMENTS_TOTAL,
    VIEWS,
    embedding_type,
)
from vivit_batch.processor import ProcessorConfig
from vivit_batch.redact import redact, redact_uri
from vivit_batch.video import (
    DecodeConfig,
    DecodeRequest,
    SamplingConfig,
    VideoError,
    VideoMetadata,
    decode_video,
)
from vivit_batch.video.isolation import IsolatedDecoder
from vivit_batch.video.segments import SegmentChunk, decode_segments

log = logging.getLogger("vivit_batch")


class CheckpointChanged(CheckpointError):
    """An inference actor loaded other weights than the driver checked."""


@dataclass(frozen=True)
class DecodeSettings:
    """What every video of a run is decoded with: a `DecodeRequest` less the video."""

    sampling: SamplingConfig
    processor: ProcessorConfig
    config: DecodeConfig = DecodeConfig()  # noqa: RUF009 (frozen: sharing it is safe)
    storage_options: dict | None = None

    def request(self, uri: str, video_id: str) -> DecodeRequest:
        return DecodeRequest(
            uri, self.sampling, self.processor, video_id, self.config, self.storage_options
        )


class DecodeStage:
    """Manifest rows -> a row per video with its clips, or in segments mode a row per segment,
    handed on a chunk of segments at a time (see `video.segments`)."""

    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        self.decoder = None
        if settings.config.isolation == "process":
            self.decoder = IsolatedDecoder(settings.config)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        videos = zip(
            batch.column("uri").to_pylist(), batch.column("video_id").to_pylist(), strict=True
        )
        if not self.settings.sampling.segments:
            rows = [self.decode_one(uri, video_id) for uri, video_id in videos]
            yield _with_decoded(batch, rows, DECODED_COLUMNS)
            return
        for index, (uri, video_id) in enumerate(videos):
            for rows in self.decode_segments(uri, video_id):
                yield _with_decoded(batch.take([index] * len(rows)), rows, SEGMENT_ROW_COLUMNS)

    def decode_all(self, batch: pa.Table) -> pa.Table:
        """Every row at once (`validate`, benchmarks): all of a video's segments in memory."""
        return pa.concat_tables(self(batch))

    def decode_one(self, uri: str, video_id: str) -> dict:
        started = time.perf_counter()
        row = dict.fromkeys(DECODED_COLUMNS)
        decode = self.decoder.decode if self.decoder else decode_video
        try:
            video = decode(self.settings.request(uri, video_id))
        except VideoError as error:
            row.update(_error_columns(error))
        else:
            meta = video.metadata
            row.update({name: getattr(meta, name) for name in METADATA_COLUMNS})
            row.update(_clip_columns(video.clips))
            row[BYTES_READ] = meta.bytes_read
        row[DECODE_SECONDS] = time.perf_counter() - started
        return row

    def decode_segments(self, uri: str, video_id: str) -> Iterator[list[dict]]:
        """A video's segment rows, a chunk at a time; an error ends them with one error row
        that says how many segment rows came before it (`SEGMENTS_TOTAL`)."""
        decode = self.decoder.decode_segments if self.decoder else decode_segments
        delivered = 0
        started = time.perf_counter()
        try:
            for chunk in decode(self.settings.request(uri, video_id)):
                rows = _segment_rows(chunk)
                per_segment_s = (time.perf_counter() - started) / len(rows)
                for row in rows:
                    row[DECODE_SECONDS] = per_segment_s
                if chunk.metadata:
                    _finish_segments(rows, chunk.metadata, chunk.first_index + len(rows))
                delivered += len(rows)
                yield rows
                started = time.perf_counter()  # not the time spent waiting for inference
        except VideoError as error:
            row = dict.fromkeys(SEGMENT_ROW_COLUMNS)
            row.update(_error_columns(error))
            row.update({SEGMENTS_TOTAL: delivered, DECODE_SECONDS: time.perf_counter() - started})
            yield [row]


SEGMENT_ROW_COLUMNS = {**SEGMENT_DECODED_COLUMNS, **DECODED_COLUMNS}


def _segment_rows(chunk: SegmentChunk) -> list[dict]:
    rows = []
    for offset, (clips, (start, end)) in enumerate(zip(chunk.clips, chunk.bounds_s, strict=True)):
        row = dict.fromkeys(SEGMENT_ROW_COLUMNS)
        row.update(_clip_columns(clips))
        row.update(
            segment_index=chunk.first_index + offset,
            segment_start_s=float(start),
            segment_end_s=float(end),
            clip_start_s=float(start),
            clip_end_s=float(end),
        )
        rows.append(row)
    return rows


def _finish_segments(rows: list[dict], metadata: VideoMetadata, total: int) -> None:
    """The last chunk's rows carry the video's metadata and its segment count."""
    video_columns = [n for n in METADATA_COLUMNS if n not in SEGMENT_SPAN_COLUMNS]
    for row in rows:
        row.update({n: getattr(metadata, n) for n in video_columns})
        row[SEGMENTS_TOTAL] = total
    rows[-1][BYTES_READ] = metadata.bytes_read


def _error_columns(error: VideoError) -> dict:
    return {"status": "error", "error_code": str(error.code), "error_message": redact(str(error))}


def _clip_columns(clips: np.ndarray) -> dict:
    return {"status": "ok", CLIPS: clips.tobytes(), CLIP_SHAPE: clips.shape, VIEWS: len(clips)}


def _with_decoded(batch: pa.Table, rows: list[dict], columns: dict[str, pa.DataType]) -> pa.Table:
    """`batch` (manifest rows) with the decoded `columns` of `rows` appended."""
    for name, kind in columns.items():
        batch = batch.append_column(name, pa.array([r[name] for r in rows], kind))
    shown = [redact_uri(uri) for uri in batch.column("uri").to_pylist()]  # fetched: done
    return batch.set_column(batch.schema.get_field_index("uri"), "uri", pa.array(shown))


@dataclass(frozen=True)
class InferenceSettings:
    model_source: str
    revision: str | None
    """the hub commit the driver resolved (None for local checkpoints)"""
    weights_sha256: str
    """what the driver checked: an actor that loads other weights refuses to label"""
    processor: ProcessorConfig
    run_id: str
    top_k: int = 5
    labels: dict[int, str] | None = None
    precision: str = "fp32"
    clips_per_forward: int = 8
    device: str = "cpu"
    """what the plan gave the actor: cuda (a GPU from Ray) or cpu"""
    torch_threads: int | None = None
    """CPU plans: the torch threads the actor was planned with"""


class InferenceStage:
    def __init__(self, settings: InferenceSettings):
        self.settings = settings
        # A refusal is raised from the first batch rather than here: Ray reports an error in an
        # actor's constructor as text only, and retries the constructor without end.
        self.refusal: Exception | None = None
        try:
            self.classifier = self._start()
        except (DeviceError, CheckpointChanged) as error:
            self.refusal = error
            return
        self.device = describe(self.classifier.device, settings.precision)
        if "warning" in self.device:
            log.warning(self.device["warning"])

    def _start(self) -> VideoClassifier:
        settings = self.settings
        device = open_device(settings.device, settings.torch_threads)
        model = load_pretrained(settings.model_source, settings.revision, device=device)
        if model.checkpoint.weights_sha256 != settings.weights_sha256:
            raise CheckpointChanged(
                f"model {settings.model_source} changed after the run started: the driver "
                f"checked weights sha256 {settings.weights_sha256[:12]}, an inference actor "
                f"loaded {model.checkpoint.weights_sha256[:12]}. Nothing was labelled with it. "
                "Do not modify a checkpoint while a run uses it; run again."
            )
        classifier = VideoClassifier(
            model,
            settings.processor,
            top_k=settings.top_k,
            labels=settings.labels,
            precision=settings.precision,
            clips_per_forward=settings.clips_per_forward,
        )
        if device.type == "cuda":
            require_fit(
                classifier.warm_up, device, settings.clips_per_forward, classifier.precision
            )
        return classifier

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.refusal:
            raise self.refusal
        started = time.perf_counter()
        ok = [i for i, s in enumerate(batch.column("status").to_pylist()) if s == "ok"]
        clips = [_clips_of(batch, i) for i in ok]
        predictions = dict(zip(ok, self.classifier.classify(clips) if clips else [], strict=True))
        batch = batch.drop_columns([CLIPS, CLIP_SHAPE])
        columns = self._prediction_columns(predictions, batch.num_rows)
        elapsed = time.perf_counter() - started
        columns[INFERENCE_SECONDS] = pa.array([elapsed / batch.num_rows] * batch.num_rows)
        columns[INFERENCE_DEVICE] = pa.array([json.dumps(self.device)] * batch.num_rows)
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        shown = [redact_uri(uri) for uri in batch.column("uri").to_pylist()]  # fetched: done
        return batch.set_column(batch.schema.get_field_index("uri"), "uri", pa.array(shown))

    def _prediction_columns(self, predictions: dict, rows: int) -> dict[str, pa.Array]:
        hidden = self.classifier.model.config.hidden_size
        found = [predictions.get(i) for i in range(rows)]
        columns = {
            name: pa.array([value_of(p) if p else None for p in found], PREDICTION_COLUMNS[name])
            for name, value_of in PREDICTION_VALUES.items()
        }
        embeddings = [p.embedding if p else np.zeros(hidden, np.float32) for p in found]
        valid = pa.array([p is not None for p in found])
        flat = pa.array(np.concatenate(embeddings) if embeddings else [], pa.float32())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            flat, type=embedding_type(hidden), mask=pa.compute.invert(valid)
        )
        provenance = {
            "model": self.settings.model_source,
            "model_sha256": self.settings.weights_sha256,
            "run_id": self.settings.run_id,
            "processed_at": datetime.now(timezone.utc),
        }
        for name, value in provenance.items():
            columns[name] = pa.array([value] * rows, PROVENANCE_COLUMNS[name])
        return columns


PREDICTION_VALUES = {
    "label": lambda p: p.labels[0],
    "label_id": lambda p: p.label_ids[0],
    "score": lambda p: p.scores[0],
    "topk_labels": lambda p: p.labels,
    "topk_ids": lambda p: p.label_ids,
    "topk_scores": lambda p: p.scores,
}
"""Each prediction column from a `Prediction` (see `inference`)."""


def _clips_of(batch: pa.Table, row: int) -> np.ndarray:
    data = batch.column(CLIPS)[row].as_py()
    shape = batch.column(CLIP_SHAPE)[row].as_py()
    return np.frombuffer(data, np.uint8).reshape(shape)
