"""The inference stage: decoded rows -> the same rows with prediction columns, their clips
dropped. Plain Python over pyarrow tables, run by the inference actors (see `inference` for
the model side: uint8 clips in, top-k labels and embeddings out).

A video whose preprocessing raises, or a batch whose labelling raises, does not fail the batch:
the batch is split in halves until the videos that raise alone are found; they become
`internal_error` rows, the others are labelled (`failures` says what stays fatal).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import torch

from vivit_batch.config import ModelSection, ResourcesSection
from vivit_batch.device import describe, open_device, require_fit
from vivit_batch.errors import CheckpointError, DeviceError
from vivit_batch.inference import Prediction, VideoClassifier
from vivit_batch.model import load_pretrained
from vivit_batch.output.schema import (
    CLIP_SHAPE,
    CLIPS,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    OUTCOME_COLUMNS,
    PREDICTION_COLUMNS,
    PROVENANCE_COLUMNS,
    embedding_type,
)
from vivit_batch.processor import ProcessorConfig
from vivit_batch.redact import redacted_uris
from vivit_batch.stages.failures import ALWAYS_FATAL, error_columns, internal_error
from vivit_batch.video import VideoError

log = logging.getLogger("vivit_batch")

FATAL: tuple[type[Exception], ...] = (
    *ALWAYS_FATAL,
    torch.cuda.OutOfMemoryError,
    torch.AcceleratorError,
)
"""What stops the run rather than make one video's error row: the device is out of memory or
in error for every video, not for this one (see `failures`)."""


class CheckpointChanged(CheckpointError):
    """An inference actor loaded other weights than the driver checked."""


@dataclass(frozen=True)
class InferenceStageOptions:
    model_source: str
    revision: str | None
    """the hub commit the driver resolved (None for local checkpoints)"""
    weights_sha256: str
    """what the driver checked: an actor that loads other weights refuses to label"""
    processor: ProcessorConfig
    run_id: str
    top_k: int = ModelSection.top_k
    labels: dict[int, str] | None = None
    precision: str = ModelSection.precision
    clips_per_forward: int = ResourcesSection.clips_per_forward
    device: str = "cpu"
    """what the plan gave the actor: cuda (a GPU from Ray) or cpu"""
    torch_threads: int | None = None
    """CPU plans: the torch threads the actor was planned with"""


class InferenceStage:
    def __init__(self, options: InferenceStageOptions):
        self.options = options
        # A refusal is raised from the first batch rather than here: Ray reports an error in an
        # actor's constructor as text only, and retries the constructor without end.
        self.refusal: Exception | None = None
        started = time.perf_counter()
        try:
            self.classifier = self._start()
        except (DeviceError, CheckpointChanged) as error:
            self.refusal = error
            return
        self.device = describe(self.classifier.device, options.precision)
        self.device["start_s"] = round(time.perf_counter() - started, 3)  # load, checks
        if "warning" in self.device:
            log.warning(self.device["warning"])

    def _start(self) -> VideoClassifier:
        options = self.options
        device = open_device(options.device, options.torch_threads)
        model = load_pretrained(options.model_source, options.revision, device=device)
        if model.checkpoint.weights_sha256 != options.weights_sha256:
            raise CheckpointChanged(
                f"model {options.model_source} changed after the run started: the driver "
                f"checked weights sha256 {options.weights_sha256[:12]}, an inference actor "
                f"loaded {model.checkpoint.weights_sha256[:12]}. Nothing was labelled with it. "
                "Do not modify a checkpoint while a run uses it; run again."
            )
        classifier = VideoClassifier(
            model,
            options.processor,
            top_k=options.top_k,
            labels=options.labels,
            precision=options.precision,
            clips_per_forward=options.clips_per_forward,
        )
        if device.type == "cuda":
            require_fit(classifier.warm_up, device, options.clips_per_forward, classifier.precision)
        return classifier

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.refusal:
            raise self.refusal
        started = time.perf_counter()
        ok = [i for i, s in enumerate(batch.column("status").to_pylist()) if s == "ok"]
        uris = batch.column("uri").to_pylist()
        clips: dict[int, np.ndarray] = {}
        failed: dict[int, VideoError] = {}
        for row in ok:
            try:
                clips[row] = _clips_of(batch, row)
            except FATAL:
                raise
            except Exception as error:  # noqa: BLE001 (one video's bug: its row)
                failed[row] = internal_error(uris[row], error, "preprocessing")
        predictions: dict[int, Prediction] = {}
        self._label_bisecting(list(clips), clips, predictions, failed, uris)
        batch = _with_errors(batch.drop_columns([CLIPS, CLIP_SHAPE]), failed)
        columns = self._prediction_columns(predictions, batch.num_rows)
        elapsed = time.perf_counter() - started
        columns[INFERENCE_SECONDS] = pa.array([elapsed / batch.num_rows] * batch.num_rows)
        columns[INFERENCE_DEVICE] = pa.array([json.dumps(self.device)] * batch.num_rows)
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        return redacted_uris(batch)  # fetched: done

    def _label_bisecting(
        self,
        rows: list[int],
        clips: dict[int, np.ndarray],
        predictions: dict[int, Prediction],
        failed: dict[int, VideoError],
        uris: list[str],
    ) -> None:
        """Label `rows` together; if that raises, each half on its own, down to single rows,
        which then fail alone (a batch with one bad video costs about 2 log2(batch) extra
        passes of shrinking size)."""
        if not rows:
            return
        try:
            found = self.classifier.classify([clips[row] for row in rows])
        except FATAL:
            raise
        except Exception as error:  # noqa: BLE001 (one video's bug: found by halving)
            if len(rows) == 1:
                failed[rows[0]] = internal_error(uris[rows[0]], error, "labelling")
                return
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                self._label_bisecting(part, clips, predictions, failed, uris)
            return
        predictions.update(zip(rows, found, strict=True))

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
            "model": self.options.model_source,
            "model_sha256": self.options.weights_sha256,
            "run_id": self.options.run_id,
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


def _with_errors(batch: pa.Table, failed: dict[int, VideoError]) -> pa.Table:
    """`batch` with the rows in `failed` made error rows."""
    if not failed:
        return batch
    for name, kind in OUTCOME_COLUMNS.items():
        values = batch.column(name).to_pylist()
        for row, error in failed.items():
            values[row] = error_columns(error)[name]
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, kind))
    return batch


def _clips_of(batch: pa.Table, row: int) -> np.ndarray:
    data = batch.column(CLIPS)[row].as_py()
    shape = batch.column(CLIP_SHAPE)[row].as_py()
    return np.frombuffer(data, np.uint8).reshape(shape)
