"""Which frames make a clip: sampling settings, frame positions per view, nearest-frame matching.

Pure functions (no video needed). A frame *position* is an index at the stream's average frame
rate; `decode` turns positions into times (`start + position / fps`) and gives each time the
decoded frame whose timestamp is nearest, so variable-frame-rate video and containers whose header
has no frame count are sampled the same way as constant-rate video with one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

TEMPORAL_VIEWS = ("center", "uniform", "random")
SPATIAL_CROPS = ("center", "three")


@dataclass(frozen=True)
class SamplingConfig:
    num_frames: int = 32
    frame_sample_rate: int = 4
    """Stride between sampled frames; a clip spans `num_frames * frame_sample_rate` frames."""
    temporal_views: str = "center"
    """`center`: one clip in the middle; `uniform`: `num_temporal_views` clips evenly spaced from
    the start to the end (the paper's multi-view protocol); `random`: one clip at a random place,
    reproducible from (`seed`, video id)."""
    num_temporal_views: int = 1
    spatial_crops: str = "center"
    """`center`, or `three`: left, centre and right along the long side (the paper's 3-crop)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")
        if self.frame_sample_rate < 1:
            raise ValueError(f"frame_sample_rate must be at least 1, got {self.frame_sample_rate}")
        if self.temporal_views not in TEMPORAL_VIEWS:
            raise ValueError(
                f"temporal_views must be one of {', '.join(TEMPORAL_VIEWS)}, "
                f"got {self.temporal_views!r}"
            )
        if self.num_temporal_views < 1:
            raise ValueError(
                f"num_temporal_views must be at least 1, got {self.num_temporal_views}"
            )
        if self.num_temporal_views > 1 and self.temporal_views != "uniform":
            raise ValueError(
                f"num_temporal_views > 1 needs temporal_views='uniform', "
                f"got {self.temporal_views!r} with num_temporal_views={self.num_temporal_views}"
            )
        if self.spatial_crops not in SPATIAL_CROPS:
            raise ValueError(
                f"spatial_crops must be one of {', '.join(SPATIAL_CROPS)}, "
                f"got {self.spatial_crops!r}"
            )

    @property
    def span(self) -> int:
        """Frames covered by one clip."""
        return self.num_frames * self.frame_sample_rate

    @property
    def num_spatial_crops(self) -> int:
        return 3 if self.spatial_crops == "three" else 1

    @property
    def num_views(self) -> int:
        return self.num_temporal_views * self.num_spatial_crops


def frame_positions(total_frames: int, sampling: SamplingConfig, video_id: str = "") -> np.ndarray:
    """Frame positions of every temporal view: int64 (num_temporal_views, num_frames).

    A video shorter than one clip's span is sampled across its whole length, repeating frames
    when it has fewer than `num_frames`; every view is then the same.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be at least 1, got {total_frames}")
    steps = np.arange(sampling.num_frames, dtype=np.int64)
    if total_frames < sampling.span:
        whole = steps * total_frames // sampling.num_frames
        return np.tile(whole, (sampling.num_temporal_views, 1))
    starts = _view_starts(total_frames - sampling.span, sampling, video_id)
    return starts[:, None] + steps[None, :] * sampling.frame_sample_rate


def _view_starts(max_start: int, sampling: SamplingConfig, video_id: str) -> np.ndarray:
    if sampling.temporal_views == "random":
        rng = np.random.default_rng([sampling.seed, _stable_hash(video_id)])
        return rng.integers(0, max_start, size=1, endpoint=True)
    if sampling.temporal_views == "uniform" and sampling.num_temporal_views > 1:
        return np.rint(np.linspace(0, max_start, sampling.num_temporal_views)).astype(np.int64)
    return np.array([max_start // 2], dtype=np.int64)


def _stable_hash(text: str) -> int:
    """A hash that, unlike `hash()`, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


Item = TypeVar("Item")


class NearestFrameMatcher(Generic[Item]):
    """Gives each target time the offered frame whose time is nearest; a tie goes to the earlier.

    Offer frames in presentation order. Each `offer` returns the assignments it settles: for the
    targets up to the offered frame's time, the nearer of that frame and the one before. Targets
    before the first frame get the first frame; `finish` gives the rest to the last frame.
    """

    def __init__(self, targets: Sequence[float]):
        if any(b < a for a, b in zip(targets[:-1], targets[1:], strict=True)):
            raise ValueError("targets must be sorted")
        self._targets = list(targets)
        self._next = 0
        self._previous: tuple[float, Item] | None = None

    @property
    def done(self) -> bool:
        return self._next == len(self._targets)

    @property
    def pending(self) -> list[float]:
        return self._targets[self._next :]

    def offer(self, time: float, item: Item) -> list[tuple[Item, list[int]]]:
        settled: dict[int, tuple[Item, list[int]]] = {}
        while not self.done and self._targets[self._next] <= time:
            target = self._targets[self._next]
            previous = self._previous
            if previous is not None and target - previous[0] <= time - target:
                chosen = previous[1]
            else:
                chosen = item
            settled.setdefault(id(chosen), (chosen, []))[1].append(self._next)
            self._next += 1
        self._previous = (time, item)
        return list(settled.values())

    def finish(self) -> list[tuple[Item, list[int]]]:
        if self.done or self._previous is None:
            return []
        rest = list(range(self._next, len(self._targets)))
        self._next = len(self._targets)
        return [(self._previous[1], rest)]
