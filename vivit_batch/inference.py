"""The inference core: uint8 clips in, top-k labels and embeddings out. Plain Python, no Ray.

Pixels travel as uint8 and are normalised on the target device, so the decode side and the
object store move a quarter of the bytes that float32 would need. On the way to the device a
clip is copied once: from the decoded bytes (Arrow's buffer, read in place) into a reusable
page-locked buffer (`ClipStaging`), from which a stream of its own copies it to the GPU while the
model runs the chunk before. Averaging over views, softmax and top-k run on the device too;
the results come back once per batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vivit_batch.config import ModelSection, ResourcesSection
from vivit_batch.device import precision_on
from vivit_batch.model import DTYPES, VideoClassifierOutput, VivitForVideoClassification
from vivit_batch.processor import ProcessorConfig


@dataclass
class Prediction:
    label_ids: list[int]
    """top-k class ids, best first"""
    labels: list[str]
    scores: list[float]
    """probabilities averaged over the video's views"""
    embedding: np.ndarray
    """(hidden,) float32: final-LayerNorm CLS token, averaged over views"""


@dataclass
class Predictions:
    """A batch's predictions as arrays, one row per video (iterate for `Prediction`s)."""

    label_ids: np.ndarray
    """(videos, k) int64, best first"""
    labels: np.ndarray
    """(videos, k) str objects"""
    scores: np.ndarray
    """(videos, k) float32"""
    embeddings: np.ndarray
    """(videos, hidden) float32"""

    def __len__(self) -> int:
        return len(self.label_ids)

    def __getitem__(self, video: int) -> Prediction:
        return Prediction(
            self.label_ids[video].tolist(),
            self.labels[video].tolist(),
            self.scores[video].tolist(),
            self.embeddings[video],
        )

    def __iter__(self) -> Iterator[Prediction]:
        return (self[video] for video in range(len(self)))


class ClipModel(nn.Module):
    """uint8 clips as decoded, (N, T, H, W, 3) on the device -> the model's output: the layout
    change and normalisation run where the model does, in one module."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: VivitForVideoClassification, processor: ProcessorConfig):
        super().__init__()
        self.model = model
        dtype = next(model.parameters()).dtype
        for name, value in zip(("scale", "shift"), processor.pixel_affine(), strict=True):
            affine = torch.from_numpy(value).to(dtype).view(1, 1, 3, 1, 1)
            self.register_buffer(name, affine, persistent=False)

    def forward(self, clips: torch.Tensor) -> VideoClassifierOutput:
        pixels = clips.permute(0, 1, 4, 2, 3).to(self.scale.dtype) * self.scale + self.shift
        return self.model(pixels)


Forward = Callable[[torch.Tensor], VideoClassifierOutput]
"""A `ClipModel`, compiled or not."""


class ClipStaging:
    """One thread's way to the device. Clips are copied once from the decoded bytes into a
    buffer that is reused (page-locked on CUDA), then on CUDA to the device on a copy stream,
    for the model to read on a stream of this thread's own. Two slots: while the model reads one
    chunk on the device, the next is copied into the other.
    """

    SLOTS = 2

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        """where this thread's model work runs: threads do not wait for each other's"""
        self.slots: list[_Slot | None] = [None] * self.SLOTS
        self.turn = 0

    def on_its_stream(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()

    @contextlib.contextmanager
    def loaded(self, pieces: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """`pieces` (each (n, T, H, W, 3) uint8) as one (N, T, H, W, 3) tensor on the device,
        for the work queued inside the block (inside `on_its_stream`)."""
        count = sum(len(piece) for piece in pieces)
        slot = self._slot(count, pieces[0].shape[1:])
        self.turn = (self.turn + 1) % self.SLOTS
        if not self.cuda:
            yield _filled(slot.host, pieces)
            return
        assert self.copy_stream and slot.copied and slot.consumed
        slot.copied.synchronize()  # the host buffer's last copy to the device is done
        host = _filled(slot.host, pieces)
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(slot.consumed)  # the model is done reading it
            slot.on_device[:count].copy_(host, non_blocking=True)
            slot.copied.record(self.copy_stream)
        torch.cuda.current_stream(self.device).wait_event(slot.copied)
        try:
            yield slot.on_device[:count]
        finally:
            slot.consumed.record(torch.cuda.current_stream(self.device))

    def _slot(self, count: int, clip_shape: tuple[int, ...]) -> _Slot:
        slot = self.slots[self.turn]
        if slot is None or slot.host.shape[1:] != clip_shape or len(slot.host) < count:
            if slot is not None:
                slot.wait_idle()
            slot = self.slots[self.turn] = _Slot.allocate(self.device, count, clip_shape)
        return slot


@dataclass
class _Slot:
    host: torch.Tensor
    on_device: torch.Tensor
    copied: torch.cuda.Event | None
    consumed: torch.cuda.Event | None

    @classmethod
    def allocate(cls, device: torch.device, count: int, clip_shape: tuple[int, ...]) -> _Slot:
        cuda = device.type == "cuda"
        host = torch.empty((count, *clip_shape), dtype=torch.uint8, pin_memory=cuda)
        if not cuda:
            return cls(host, host, None, None)
        on_device = torch.empty_like(host, device=device)
        return cls(host, on_device, torch.cuda.Event(), torch.cuda.Event())

    def wait_idle(self) -> None:
        for event in (self.copied, self.consumed):
            if event:
                event.synchronize()


def _filled(buffer: torch.Tensor, pieces: Sequence[np.ndarray]) -> torch.Tensor:
    """The first clips of `buffer`, filled with `pieces` (one copy each)."""
    host, start = buffer.numpy(), 0
    for piece in pieces:
        np.copyto(host[start : start + len(piece)], piece, casting="no")
        start += len(piece)
    return buffer[:start]


class VideoClassifier:
    def __init__(
        self,
        model: VivitForVideoClassification,
        processor: ProcessorConfig,
        *,
        top_k: int = ModelSection.top_k,
        labels: dict[int, str] | None = None,
        precision: str = ModelSection.precision,
        clips_per_forward: int = ResourcesSection.clips_per_forward,
        compile: str = ModelSection.compile,
    ):
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r} is not one of {sorted(DTYPES)}")
        self.model = model
        self.device = next(model.parameters()).device
        self.top_k = min(top_k, model.config.num_labels)
        names = labels or model.config.id2label
        self.names = np.array(
            [names.get(i, f"LABEL_{i}") for i in range(model.config.num_labels)], dtype=object
        )
        self.precision = precision_on(self.device, precision)
        """what runs: autocast is CUDA's only (see `device`)"""
        self.dtype = DTYPES[self.precision]
        self.clips_per_forward = clips_per_forward
        self.eager = ClipModel(model, processor).to(self.device)
        self.forward: Forward = torch.compile(self.eager) if compile == "inductor" else self.eager
        self._threads = threading.local()

    @property
    def staging(self) -> ClipStaging:
        """This thread's (an inference actor may label two batches at once)."""
        if not hasattr(self._threads, "staging"):
            self._threads.staging = ClipStaging(self.device)
        return self._threads.staging

    @torch.inference_mode()
    def classify(self, videos: Sequence[np.ndarray]) -> Predictions:
        """`videos`: one uint8 array (views, T, H, W, 3) per video, read in place; one
        prediction each."""
        with self.staging.on_its_stream():
            probabilities, embeddings = self._per_video(videos)
            scores, ids = probabilities.topk(self.top_k)
            scores, ids, embeddings = _to_host(scores, ids, embeddings)
        return Predictions(ids.numpy(), self.names[ids.numpy()], scores.numpy(), embeddings.numpy())

    def warm_up(self, clips: int | None = None) -> None:
        """One forward pass of `clips` (default: clips_per_forward) blank full-size clips:
        allocates what labelling needs (and raises on CUDA if it does not fit); then, where
        the model is compiled, compiles it for full chunks."""
        self._blank_pass(self.eager, clips or self.clips_per_forward)
        if self.forward is not self.eager:
            self._blank_pass(self.forward, self.clips_per_forward)

    def _blank_pass(self, forward: Forward, clips: int) -> None:
        config = self.model.config
        size = (config.num_frames, config.image_size, config.image_size, config.num_channels)
        blank = torch.zeros((clips, *size), dtype=torch.uint8, device=self.device)
        with torch.inference_mode(), self._autocast():
            forward(blank)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )

    def _per_video(self, videos: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, embeddings) of each video, averaged over its views, on the device."""
        probabilities, embeddings = [], []
        for chunk in _chunks(videos, self.clips_per_forward):
            with self.staging.loaded(chunk) as clips, self._autocast():
                output = self.forward(clips)
            probabilities.append(output.logits.float().softmax(-1))
            embeddings.append(output.embedding.float())
        views = torch.tensor([len(video) for video in videos])
        video_of_clip = torch.repeat_interleave(torch.arange(len(videos)), views).to(self.device)
        views = views.to(self.device).unsqueeze(1)
        mean_probabilities, mean_embeddings = (
            _mean_of(torch.cat(rows), video_of_clip, views) for rows in (probabilities, embeddings)
        )
        return mean_probabilities, mean_embeddings


def _chunks(videos: Sequence[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """The videos' clips, in order, as lists of views-slices of at most `size` clips."""
    chunk: list[np.ndarray] = []
    room = size
    for video in videos:
        start = 0
        while start < len(video):
            piece = video[start : start + room]
            chunk.append(piece)
            start, room = start + len(piece), room - len(piece)
            if not room:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _mean_of(rows: torch.Tensor, group: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """The mean of the `rows` of each group (`group`: each row's, `sizes`: (groups, 1))."""
    sums = torch.zeros((len(sizes), rows.shape[1]), dtype=rows.dtype, device=rows.device)
    return sums.index_add_(0, group, rows) / sizes


def _to_host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors on the CPU, in one wait for the device."""
    host = tuple(tensor.to("cpu", non_blocking=True) for tensor in tensors)
    if tensors[0].is_cuda:
        torch.cuda.current_stream(tensors[0].device).synchronize()
    return host
