"""The two per-batch stages the pipeline runs on actors. Plain Python over pyarrow tables.

`DecodeStage`: manifest rows -> rows with uint8 clips (as bytes) and video metadata, or error rows.
`InferenceStage`: those rows -> prediction columns. A bad video is a row with `status = "error"`,
never an exception: an exception would make Ray Data drop or retry a whole batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from vivit_batch.inference import VideoClassifier
from vivit_batch.model import load_pretrained
from vivit_batch.processor import ProcessorConfig
from vivit_batch.video import DecodeLimits, SamplingConfig, VideoError, decode_video
from vivit_batch.video.isolation import DEFAULT_MAX_MEMORY_BYTES, IsolatedDecoder

METADATA_COLUMNS = {
    "duration_s": pa.float64(),
    "fps": pa.float64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "num_frames": pa.int64(),
    "clip_start_s": pa.float64(),
    "clip_end_s": pa.float64(),
}


@dataclass(frozen=True)
class DecodeSettings:
    sampling: SamplingConfig
    processor: ProcessorConfig
    limits: DecodeLimits
    threads: int = 1
    storage_options: dict | None = None
    isolation: str = "process"
    """process: decode in a child process (`IsolatedDecoder`); none: in this one"""
    crash_retries: int = 1
    max_memory_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES


class DecodeStage:
    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        self.decoder = None
        if settings.isolation == "process":
            self.decoder = IsolatedDecoder(
                crash_retries=settings.crash_retries, max_memory_bytes=settings.max_memory_bytes
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [
            self.decode_one(uri, video_id)
            for uri, video_id in zip(
                batch.column("uri").to_pylist(), batch.column("video_id").to_pylist(), strict=True
            )
        ]
        columns = {
            name: pa.array([r[name] for r in rows], kind) for name, kind in DECODED_COLUMNS.items()
        }
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        return batch

    def decode_one(self, uri: str, video_id: str) -> dict:
        s = self.settings
        started = time.perf_counter()
        row = dict.fromkeys(DECODED_COLUMNS)
        decode = self.decoder.decode if self.decoder else decode_video
        try:
            video = decode(
                uri,
                s.sampling,
                s.processor,
                video_id=video_id,
                limits=s.limits,
                threads=s.threads,
                storage_options=s.storage_options,
            )
        except VideoError as error:
            row.update(status="error", error_code=str(error.code), error_message=str(error))
        else:
            meta = video.metadata
            row.update({name: getattr(meta, name) for name in METADATA_COLUMNS})
            row.update(
                status="ok",
                _clips=video.clips.tobytes(),
                _clip_shape=video.clips.shape,
                _views=len(video.clips),
                _bytes_read=meta.bytes_read,
            )
        row["_decode_s"] = time.perf_counter() - started
        return row


DECODED_COLUMNS = {
    "status": pa.string(),
    "error_code": pa.string(),
    "error_message": pa.string(),
    **METADATA_COLUMNS,
    "_clips": pa.large_binary(),
    "_clip_shape": pa.list_(pa.int32()),
    "_views": pa.int32(),
    "_bytes_read": pa.int64(),
    "_decode_s": pa.float64(),
}


@dataclass(frozen=True)
class InferenceSettings:
    model_source: str
    revision: str | None
    processor: ProcessorConfig
    run_id: str
    top_k: int = 5
    labels: dict[int, str] | None = None
    precision: str = "fp32"
    clips_per_forward: int = 8
    torch_threads: int | None = None


class InferenceStage:
    def __init__(self, settings: InferenceSettings):
        import torch

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_pretrained(settings.model_source, settings.revision, device=device)
        self.classifier = VideoClassifier(
            model,
            settings.processor,
            top_k=settings.top_k,
            labels=settings.labels,
            precision=settings.precision,
            clips_per_forward=settings.clips_per_forward,
        )
        self.settings = settings
        self.weights_sha256 = model.checkpoint.weights_sha256

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        ok = [i for i, s in enumerate(batch.column("status").to_pylist()) if s == "ok"]
        clips = [_clips_of(batch, i) for i in ok]
        predictions = dict(zip(ok, self.classifier.classify(clips) if clips else [], strict=True))
        batch = batch.drop_columns(["_clips", "_clip_shape"])
        columns = self._prediction_columns(predictions, batch.num_rows)
        elapsed = time.perf_counter() - started
        columns["_inference_s"] = pa.array([elapsed / batch.num_rows] * batch.num_rows)
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        return batch

    def _prediction_columns(self, predictions: dict, rows: int) -> dict[str, pa.Array]:
        hidden = self.classifier.model.config.hidden_size
        found = [predictions.get(i) for i in range(rows)]

        def per_row(value_of, kind):
            return pa.array([value_of(p) if p else None for p in found], kind)

        embeddings = [p.embedding if p else np.zeros(hidden, np.float32) for p in found]
        valid = pa.array([p is not None for p in found])
        flat = pa.array(np.concatenate(embeddings) if embeddings else [], pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, hidden, mask=pa.compute.invert(valid))
        now = datetime.now(timezone.utc)
        return {
            "label": per_row(lambda p: p.labels[0], pa.string()),
            "label_id": per_row(lambda p: p.label_ids[0], pa.int32()),
            "score": per_row(lambda p: p.scores[0], pa.float32()),
            "topk_labels": per_row(lambda p: p.labels, pa.list_(pa.string())),
            "topk_ids": per_row(lambda p: p.label_ids, pa.list_(pa.int32())),
            "topk_scores": per_row(lambda p: p.scores, pa.list_(pa.float32())),
            "embedding": embedding,
            "model": pa.array([self.settings.model_source] * rows, pa.string()),
            "model_sha256": pa.array([self.weights_sha256] * rows, pa.string()),
            "run_id": pa.array([self.settings.run_id] * rows, pa.string()),
            "processed_at": pa.array([now] * rows, pa.timestamp("us", tz="UTC")),
        }


def _clips_of(batch: pa.Table, row: int) -> np.ndarray:
    data = batch.column("_clips")[row].as_py()
    shape = batch.column("_clip_shape")[row].as_py()
    return np.frombuffer(data, np.uint8).reshape(shape)
