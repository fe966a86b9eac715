"""Train the demo checkpoint: a tiny ViViT that tells the synthetic motion classes apart.

    python -m vivit_batch.demo.train --out vivit_batch/demo/checkpoint --seed 0

Training videos are written by `synthetic.write_sample_video` and decoded by the job's own
`decode_video` with the checkpoint's sampling and processor settings, so training sees the pixels
that inference sees. Held-out videos (another seed) are decoded exactly as the job decodes them
(one centred clip, centre crop) and classified with the job's `VideoClassifier`. Runs on CPU in a
few minutes (about 3 on two shared cores), deterministically for a seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vivit_batch.config import SamplingConfig
from vivit_batch.demo import CHECKPOINT_DIR, FRAME_SAMPLE_RATE
from vivit_batch.demo.synthetic import MOTION_CLASSES, write_sample_video
from vivit_batch.inference import VideoClassifier
from vivit_batch.model import VivitConfig, VivitForVideoClassification, save_pretrained
from vivit_batch.processor import ProcessorConfig
from vivit_batch.video import DecodeRequest, decode_video

TRAINING_FILE = "training.json"
VALIDATION_SEED_OFFSET = 7919  # held-out videos come from a seed the training set never uses
MODEL: dict[str, Any] = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=(4, 8, 8),
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
)
PROCESSOR = ProcessorConfig(shortest_edge=32, crop_height=32, crop_width=32)


@dataclass(frozen=True)
class TrainingRecipe:
    seed: int = 0
    train_videos: int = 560
    validation_videos: int = 210
    training_views: int = 3
    """temporal views decoded per training video (spread over it): more clips for free"""
    epochs: int = 24
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    workers: int = 2
    """threads writing and decoding videos; training itself uses one (see `train`)"""


@dataclass(frozen=True)
class Symmetry:
    """A transform of uint8 clips (B, T, H, W, 3) and the class swaps it causes."""

    transform: Callable[[torch.Tensor], torch.Tensor]
    swaps: tuple[tuple[str, str], ...]

    def label_map(self) -> torch.Tensor:
        mapping = {name: name for name in MOTION_CLASSES}
        for first, second in self.swaps:
            mapping[first], mapping[second] = second, first
        return torch.tensor([MOTION_CLASSES.index(mapping[name]) for name in MOTION_CLASSES])


SYMMETRIES = (
    Symmetry(lambda clips: clips.flip(3), (("moving left", "moving right"),)),
    Symmetry(lambda clips: clips.flip(2), (("moving up", "moving down"),)),
    Symmetry(
        lambda clips: clips.transpose(2, 3),
        (("moving left", "moving up"), ("moving right", "moving down")),
    ),
    Symmetry(  # played backwards
        lambda clips: clips.flip(1),
        (
            ("moving left", "moving right"),
            ("moving up", "moving down"),
            ("zooming in", "zooming out"),
        ),
    ),
)


def model_config() -> VivitConfig:
    return VivitConfig(**MODEL, id2label=dict(enumerate(MOTION_CLASSES)))


def inference_sampling(num_frames: int) -> SamplingConfig:
    """What the job samples for this checkpoint: one centred clip."""
    return SamplingConfig(num_frames=num_frames, frame_sample_rate=FRAME_SAMPLE_RATE)


def train(recipe: TrainingRecipe, out: Path) -> float:
    """Train, save the checkpoint and training.json into `out`; returns held-out accuracy."""
    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True)
    # one thread: reproducible, and on shared cores several threads stall each other
    torch.set_num_threads(1)
    config = model_config()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vivit-demo-") as scratch:
        clips, labels = training_clips(Path(scratch), config.num_frames, recipe)
        held_out = held_out_videos(Path(scratch), config.num_frames, recipe)
    print(f"{len(clips)} training clips written and decoded in {_since(started)}")
    model = VivitForVideoClassification(config)
    make_motion_sensitive(model)
    fit(model, clips, labels, recipe)
    accuracy = evaluate(model, *held_out)
    print(f"held-out accuracy {accuracy:.4f} on {len(held_out[1])} videos; total {_since(started)}")
    save_pretrained(model, out, PROCESSOR)
    record = {"seed": recipe.seed, "validation_accuracy": accuracy, "settings": asdict(recipe)}
    (Path(out) / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return accuracy


def training_clips(
    scratch: Path, num_frames: int, recipe: TrainingRecipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips (N, T, H, W, 3) from several temporal views per video, and their labels."""
    sampling = SamplingConfig(
        num_frames=num_frames,
        frame_sample_rate=FRAME_SAMPLE_RATE,
        temporal_views="uniform",
        num_temporal_views=recipe.training_views,
    )
    videos = decode_sample_set(
        scratch / "train", recipe.train_videos, recipe.seed, sampling, recipe.workers
    )
    clips = np.concatenate([video_clips for video_clips, _ in videos])
    labels = np.concatenate([[label] * len(video_clips) for video_clips, label in videos])
    return torch.from_numpy(clips), torch.from_numpy(labels)


def held_out_videos(
    scratch: Path, num_frames: int, recipe: TrainingRecipe
) -> tuple[list[np.ndarray], list[int]]:
    """Videos of another seed, decoded as the job decodes them: (clips per video, labels)."""
    videos = decode_sample_set(
        scratch / "held-out",
        recipe.validation_videos,
        recipe.seed + VALIDATION_SEED_OFFSET,
        inference_sampling(num_frames),
        recipe.workers,
    )
    return [clips for clips, _ in videos], [label for _, label in videos]


def decode_sample_set(
    directory: Path, count: int, seed: int, sampling: SamplingConfig, threads: int
) -> list[tuple[np.ndarray, int]]:
    """Write and decode `count` videos, `threads` at a time: (clips, class id) each, in order."""
    directory.mkdir(parents=True)

    def write_and_decode(index: int) -> tuple[np.ndarray, int]:
        video = write_sample_video(directory, index, seed)
        decoded = decode_video(DecodeRequest(str(video.path), sampling, PROCESSOR))
        video.path.unlink()
        return decoded.clips, MOTION_CLASSES.index(video.label)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(write_and_decode, range(count)))


def make_motion_sensitive(
    model: VivitForVideoClassification, fraction: float = 0.5, gain: float = 3.0
) -> None:
    """Start `fraction` of the tubelet filters temporally zero-mean (blind to anything static), and
    `gain` times stronger.

    From the default initialisation, the tiny model spends most of its budget on a plateau before
    it learns to ignore the static background; starting from filters that already do, it learns
    the motion classes within a few hundred steps.
    """
    weight = model.vivit.embeddings.patch_embeddings.projection.weight  # (out, 3, t, h, w)
    count = int(len(weight) * fraction)
    with torch.no_grad():
        weight[:count] -= weight[:count].mean(dim=2, keepdim=True)
        weight[:count] *= gain


def fit(
    model: VivitForVideoClassification,
    clips: torch.Tensor,
    labels: torch.Tensor,
    recipe: TrainingRecipe,
) -> None:
    """AdamW with a one-cycle schedule; every batch is augmented with `SYMMETRIES`."""
    generator = torch.Generator().manual_seed(recipe.seed)
    steps_per_epoch = -(-len(clips) // recipe.batch_size)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, recipe.learning_rate, total_steps=recipe.epochs * steps_per_epoch
    )
    normalise = pixel_normaliser(PROCESSOR)
    model.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(clips), generator=generator)
        total_loss = 0.0
        for batch in order.split(recipe.batch_size):
            batch_clips, batch_labels = augment(clips[batch], labels[batch], generator)
            loss = torch.nn.functional.cross_entropy(
                model(normalise(batch_clips)).logits, batch_labels
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{recipe.epochs}: loss {total_loss / len(clips):.4f}")
    model.eval()


def augment(
    clips: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply each symmetry to a random half of the batch, relabelling what it turns around."""
    clips, labels = clips.clone(), labels.clone()
    for symmetry in SYMMETRIES:
        chosen = torch.rand(len(clips), generator=generator) < 0.5
        clips[chosen] = symmetry.transform(clips[chosen])
        labels[chosen] = symmetry.label_map()[labels[chosen]]
    return clips, labels


def pixel_normaliser(processor: ProcessorConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B, T, H, W, 3) -> model input (B, T, 3, H, W), as `VideoClassifier` computes it."""
    scale, shift = (torch.from_numpy(v).view(1, 1, 3, 1, 1) for v in processor.pixel_affine())
    return lambda clips: clips.permute(0, 1, 4, 2, 3).float() * scale + shift


def evaluate(
    model: VivitForVideoClassification, videos: list[np.ndarray], labels: list[int]
) -> float:
    predictions = VideoClassifier(model, PROCESSOR, top_k=1).classify(videos)
    correct = sum(p.label_ids[0] == label for p, label in zip(predictions, labels, strict=True))
    return correct / len(labels)


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--seed", type=int, default=TrainingRecipe.seed)
    parser.add_argument("--workers", type=int, default=TrainingRecipe.workers)
    args = parser.parse_args(argv)
    train(TrainingRecipe(seed=args.seed, workers=args.workers), args.out)


if __name__ == "__main__":
    main()
