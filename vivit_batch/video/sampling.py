"""Which frames make a clip (as the `sampling` section says): frame positions per view or per
segment, nearest-frame matching.

Pure functions (no video needed). A frame *position* is an index at the stream's average frame
rate; `decode` turns positions into times (`start + position / fps`) and gives each time the
decoded frame whose timestamp is nearest, so variable-frame-rate video and containers whose header
has no frame count are sampled the same way as constant-rate video with one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from vivit_batch.config import SamplingConfig


def frame_positions(total_frames: int, sampling: SamplingConfig, video_id: str = "") -> np.ndarray:
    """Frame positions of every temporal view: int64 (num_temporal_views, num_frames).

    A video shorter than one clip's span is sampled across its whole length, repeating frames
    when it has fewer than `num_frames`; every view is then the same.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be at least 1, got {total_frames}")
    steps = np.arange(sampling.frames, dtype=np.int64)
    if total_frames < sampling.span:
        whole = steps * total_frames // sampling.frames
        return np.tile(whole, (sampling.num_temporal_views, 1))
    starts = _view_starts(total_frames - sampling.span, sampling, video_id)
    return starts[:, None] + steps[None, :] * sampling.frame_sample_rate


@dataclass(frozen=True)
class SegmentPlan:
    """Where a video's segments lie and which frames label each, in frame positions (at the
    average frame rate, from the first frame; fractional where seconds do not fall on a frame)."""

    bounds: np.ndarray
    """float64 (segments, 2): each segment's start and end"""
    positions: np.ndarray
    """float64 (segments, num_frames): the frames of its clip, spread evenly from its start"""


def plan_segments(total_frames: int, sampling: SamplingConfig, fps: float) -> SegmentPlan:
    """The segments of a video of `total_frames` frames. One starts every stride from the first
    frame, each `segment_s` long, while it fits; what is left after the last that fits is a
    segment of its own (the next stride on, ending at the video's end) when it is at least half
    a stride long, else the last one is extended to the video's end. A video no longer than
    one segment is one segment."""
    if total_frames < 1:
        raise ValueError(f"total_frames must be at least 1, got {total_frames}")
    length = sampling.span if sampling.segment_s is None else sampling.segment_s * fps
    stride = length if sampling.segment_stride_s is None else sampling.segment_stride_s * fps
    fitting = max(1, 1 + math.floor((total_frames - length) / stride + 1e-9))
    starts = np.arange(fitting, dtype=np.float64) * stride
    ends = np.minimum(starts + length, total_frames)
    if total_frames - ends[-1] >= stride / 2:
        starts, ends = np.append(starts, fitting * stride), np.append(ends, total_frames)
    ends[-1] = total_frames
    steps = np.arange(sampling.frames, dtype=np.float64) / sampling.frames
    positions = starts[:, None] + steps[None, :] * (ends - starts)[:, None]
    return SegmentPlan(np.stack([starts, ends], axis=1), positions)


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
    def settled(self) -> int:
        """How many targets (from the first) have their frame."""
        return self._next

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
