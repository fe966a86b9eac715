"""The inference core: uint8 clips in, top-k labels and embeddings out. Plain Python, no Ray.

Pixels travel as uint8 and are normalised on the target device, so the decode side and the
object store move a quarter of the bytes that float32 would need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vivit_batch.config import ModelSection, ResourcesSection
from vivit_batch.device import precision_on
from vivit_batch.model import DTYPES, VivitForVideoClassification
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
    ):
        if precision not in DTYPES:
            raise ValueError(f"precision {precision!r} is not one of {sorted(DTYPES)}")
        self.model = model
        self.device = next(model.parameters()).device
        self.top_k = min(top_k, model.config.num_labels)
        self.labels = labels or model.config.id2label
        self.precision = precision_on(self.device, precision)
        """what runs: autocast is CUDA's only (see `device`)"""
        self.dtype = DTYPES[self.precision]
        self.clips_per_forward = clips_per_forward
        scale, shift = processor.pixel_affine()
        self.scale = torch.from_numpy(scale).to(self.device).view(1, 1, 3, 1, 1)
        self.shift = torch.from_numpy(shift).to(self.device).view(1, 1, 3, 1, 1)

    @torch.inference_mode()
    def classify(self, videos: Sequence[np.ndarray]) -> list[Prediction]:
        """`videos`: one uint8 array (views, T, H, W, 3) per video; one Prediction each."""
        views_per_video = [len(clips) for clips in videos]
        probabilities, embeddings = self._run(np.concatenate(videos))
        predictions = []
        for probs, embeds in zip(
            probabilities.split(views_per_video), embeddings.split(views_per_video), strict=True
        ):
            predictions.append(self._predict(probs.mean(0), embeds.mean(0)))
        return predictions

    def warm_up(self) -> None:
        """One forward pass of `clips_per_forward` blank full-size clips: allocates what
        labelling needs (and raises on CUDA if it does not fit)."""
        config = self.model.config
        size = (config.num_frames, config.image_size, config.image_size, config.num_channels)
        self._run(np.zeros((self.clips_per_forward, *size), np.uint8))

    def _run(self, clips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """All views through the model in chunks; (probabilities, embeddings) on the CPU."""
        probabilities, embeddings = [], []
        for start in range(0, len(clips), self.clips_per_forward):
            pixels = self._normalise(clips[start : start + self.clips_per_forward])
            with torch.autocast(
                self.device.type,
                dtype=self.dtype,
                enabled=self.dtype != torch.float32,
            ):
                output = self.model(pixels)
            probabilities.append(output.logits.float().softmax(-1).cpu())
            embeddings.append(output.embedding.float().cpu())
        return torch.cat(probabilities), torch.cat(embeddings)

    def _normalise(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 (N, T, H, W, 3) -> model input (N, T, 3, H, W) on the device."""
        pixels = torch.from_numpy(np.ascontiguousarray(clips))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=True).permute(0, 1, 4, 2, 3)
        dtype = next(self.model.parameters()).dtype
        return (pixels.to(dtype) * self.scale + self.shift).to(dtype)

    def _predict(self, probabilities: torch.Tensor, embedding: torch.Tensor) -> Prediction:
        scores, top = probabilities.topk(self.top_k)
        ids = top.tolist()
        return Prediction(
            label_ids=ids,
            labels=[self.labels.get(i, f"LABEL_{i}") for i in ids],
            scores=scores.tolist(),
            embedding=embedding.numpy(),
        )
