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
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from vivit_batch.config import ModelSection, ResourcesSection
from vivit_batch.device import describe, open_device, require_fit
from vivit_batch.errors import CheckpointError, DeviceError
from vivit_batch.inference import Predictions, VideoClassifier
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
    compile: str = ModelSection.compile
    clips_per_forward: int = ResourcesSection.clips_per_forward
    device: str = "cpu"
    """what the plan gave the actor: cuda (a GPU from Ray) or cpu"""
    torch_threads: int | None = None
    """CPU plans: the torch threads the actor was planned with"""
    concurrent_batches: int = 1
    """batches the actor labels at once (`pipeline` sets 2 on a GPU: one batch's copies and
    host work overlap the other's forward pass)"""


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
        self.device["pid"] = os.getpid()  # each actor its own record, alike as they may be
        self.device_json = json.dumps(self.device)
        self.busy = _BusyTime()
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
            compile=options.compile,
        )
        if device.type == "cuda":
            cpf, batches = options.clips_per_forward, options.concurrent_batches
            warm_up = partial(classifier.warm_up, cpf * batches)
            require_fit(warm_up, device, cpf, classifier.precision, batches)
        return classifier

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.refusal:
            raise self.refusal
        self.busy.started(time.perf_counter())
        try:
            found, failed = self._labelled(batch)
        finally:
            busy = self.busy.ended(time.perf_counter())
        batch = _with_errors(batch.drop_columns([CLIPS, CLIP_SHAPE]), failed)
        rows = batch.num_rows
        columns = {
            **found.columns(self.classifier.names),
            **self._provenance(rows),
            INFERENCE_SECONDS: pa.repeat(pa.scalar(busy / rows), rows),
            INFERENCE_DEVICE: pa.repeat(pa.scalar(self.device_json), rows),
        }
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        return redacted_uris(batch)  # fetched: done

    def _labelled(self, batch: pa.Table) -> tuple[_Found, dict[int, VideoError]]:
        """The batch's predictions, and its rows that failed in preprocessing or labelling."""
        uris = batch.column("uri")
        column = _ClipColumn(batch)
        clips: dict[int, np.ndarray] = {}
        failed: dict[int, VideoError] = {}
        for row in _ok_rows(batch):
            try:
                clips[row] = column[row]
            except FATAL:
                raise
            except Exception as error:  # noqa: BLE001 (one video's bug: its row)
                failed[row] = internal_error(uris[row].as_py(), error, "preprocessing")
        hidden = self.classifier.model.config.hidden_size
        found = _Found.empty(batch.num_rows, self.classifier.top_k, hidden)
        self._label_bisecting(list(clips), clips, found, failed, uris)
        return found, failed

    def _label_bisecting(
        self,
        rows: list[int],
        clips: dict[int, np.ndarray],
        found: _Found,
        failed: dict[int, VideoError],
        uris: pa.ChunkedArray,
    ) -> None:
        """Label `rows` together; if that raises, each half on its own, down to single rows,
        which then fail alone (a batch with one bad video costs about 2 log2(batch) extra
        passes of shrinking size)."""
        if not rows:
            return
        try:
            predictions = self.classifier.classify([clips[row] for row in rows])
        except FATAL:
            raise
        except Exception as error:  # noqa: BLE001 (one video's bug: found by halving)
            if len(rows) == 1:
                failed[rows[0]] = internal_error(uris[rows[0]].as_py(), error, "labelling")
                return
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                self._label_bisecting(part, clips, found, failed, uris)
            return
        found.add(rows, predictions)

    def _provenance(self, rows: int) -> dict[str, pa.Array]:
        values = {
            "model": self.options.model_source,
            "model_sha256": self.options.weights_sha256,
            "run_id": self.options.run_id,
            "processed_at": datetime.now(timezone.utc),
        }
        return {
            name: pa.repeat(pa.scalar(value, PROVENANCE_COLUMNS[name]), rows)
            for name, value in values.items()
        }


class _BusyTime:
    """The seconds in which at least one of a stage's calls ran, handed out to the calls as they
    end (the run report's stage rate divides clips by their sum): time in which two calls ran
    counts once, and time in which none ran not at all."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.last = 0.0
        self.unclaimed = 0.0

    def started(self, now: float) -> None:
        with self.lock:
            self._tick(now)
            self.running += 1

    def ended(self, now: float) -> float:
        """The busy seconds since the last call that ended (this call's share)."""
        with self.lock:
            self._tick(now)
            self.running -= 1
            seconds, self.unclaimed = self.unclaimed, 0.0
            return seconds

    def _tick(self, now: float) -> None:
        if self.running:
            self.unclaimed += now - self.last
        self.last = now


@dataclass
class _Found:
    """A batch's predictions by row, as arrays (rows without one are null in every column)."""

    ids: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    labelled: np.ndarray

    @classmethod
    def empty(cls, rows: int, top_k: int, hidden: int) -> _Found:
        return cls(
            np.zeros((rows, top_k), np.int64),
            np.zeros((rows, top_k), np.float32),
            np.zeros((rows, hidden), np.float32),
            np.zeros(rows, bool),
        )

    def add(self, rows: list[int], predictions: Predictions) -> None:
        self.ids[rows] = predictions.label_ids
        self.scores[rows] = predictions.scores
        self.embeddings[rows] = predictions.embeddings
        self.labelled[rows] = True

    def columns(self, names: np.ndarray) -> dict[str, pa.Array]:
        """The prediction columns and the embedding."""
        missing = ~self.labelled
        rows, top_k = self.ids.shape
        top_ids = self.ids.astype(np.int32)
        offsets = pa.array(np.arange(0, rows * top_k + 1, top_k, dtype=np.int32))

        def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
            flat = pa.array(values.ravel(), kind.value_type)
            return pa.ListArray.from_arrays(offsets, flat, type=kind, mask=pa.array(missing))

        first = {
            "label": names[top_ids[:, 0]],
            "label_id": top_ids[:, 0],
            "score": self.scores[:, 0],
        }
        columns = {
            name: pa.array(values, PREDICTION_COLUMNS[name], mask=missing)
            for name, values in first.items()
        }
        columns["topk_labels"] = lists(names[top_ids], PREDICTION_COLUMNS["topk_labels"])
        columns["topk_ids"] = lists(top_ids, PREDICTION_COLUMNS["topk_ids"])
        columns["topk_scores"] = lists(self.scores, PREDICTION_COLUMNS["topk_scores"])
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(self.embeddings.ravel()),
            type=embedding_type(self.embeddings.shape[1]),
            mask=pa.array(missing),
        )
        return columns


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


class _ClipColumn:
    """A batch's clips, each row's a (views, T, H, W, 3) uint8 array read in place from the
    Arrow buffers (no copy: the one copy is `ClipStaging`'s, to the device)."""

    def __init__(self, batch: pa.Table):
        self.shapes = batch.column(CLIP_SHAPE)
        self.rows: list[tuple[np.ndarray, int, int]] = []  # (chunk's bytes, start, end)
        for chunk in batch.column(CLIPS).chunks:
            if not len(chunk):
                continue
            offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset :]
            data = np.frombuffer(chunk.buffers()[2] or b"", np.uint8)
            self.rows += [(data, offsets[i], offsets[i + 1]) for i in range(len(chunk))]

    def __getitem__(self, row: int) -> np.ndarray:
        """Raises ValueError where the row's bytes do not fit its shape."""
        data, start, end = self.rows[row]
        return data[start:end].reshape(self.shapes[row].as_py())


def _ok_rows(batch: pa.Table) -> list[int]:
    ok = pc.fill_null(pc.equal(batch.column("status"), "ok"), False)
    return np.flatnonzero(ok.to_numpy()).tolist()
