"""Decoding the frames nearest a set of times from an open video stream: seek, decode, match."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from fractions import Fraction
from math import floor
from typing import TypeVar

import av
import numpy as np

from vivit_batch.video.container import StreamInfo
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.sampling import NearestFrameMatcher

_PROTECTED_INTERVALS = 0.75
"""Packets this many frame intervals or closer to a sampled time are always decoded."""
_SEEK_GAP_S = 1.0
"""A later sampled time this far ahead of the last decoded frame is worth a seek (when the index
shows a keyframe in between, or the container has no index)."""
_SEEK_BACKOFF_S = 1.0
"""First step back after a seek that landed past its target."""
_SKIP_NONREF_DECODERS = frozenset({"h264", "hevc"})
"""Decoders that honour `skip_frame` packet by packet. dav1d reads it once, when it opens; MPEG-4
part 2 in AVI gets its timestamps wrong when B-frames are dropped."""

T = TypeVar("T")


class Deadline:
    """A soft time limit for one video, checked between packets and frames."""

    def __init__(self, uri: str, timeout_s: float | None):
        self.uri = uri
        self._timeout_s = timeout_s
        self.restart()

    def restart(self) -> None:
        """The full time again, from now (segments: for each chunk)."""
        timeout_s = self._timeout_s
        self._end = None if timeout_s is None else time.monotonic() + timeout_s

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise VideoError(
                ErrorCode.TIMEOUT,
                self.uri,
                f"decoding took longer than {self._timeout_s:g} s; raise decode.timeout_s "
                "if videos this long or large are expected",
            )


class ClipDecoder:
    """Decodes the frames nearest given times from one open video stream, and keeps count.

    Counts frames decoded and corrupt packets or frames, remembers the latest frame's time, and
    whether the stream ran out more than a frame before the last time asked for (`ended_early`).
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        info: StreamInfo,
        deadline: Deadline,
        max_frames_per_clip: int | None = None,
    ):
        self._container = container
        self._stream = stream
        self._interval = 1.0 / info.sampling_fps
        self._start_s = info.start_s
        self._deadline = deadline
        self._max_frames_per_clip = max_frames_per_clip
        self._max_decoded: int | None = None
        self._fresh = True
        self._blind_seeks_land_near = True
        """Without an index, seeking pays while seeks land near their target."""
        self.decoded = 0
        self.corrupt = 0
        self.last_time: float | None = None
        self.ended_early = False

    def decode_at(self, times: np.ndarray, convert: Callable[[av.VideoFrame], T]) -> list[list[T]]:
        """`convert(frame)` of the frame nearest each of `times` (views, T), nested like it.

        Each frame is converted once however many times it is sampled.
        """
        targets, inverse = np.unique(times, return_inverse=True)
        targets = targets.tolist()
        results: list = [None] * len(targets)
        self.ended_early = False
        if self._max_frames_per_clip is not None:
            self._max_decoded = self.decoded + self._max_frames_per_clip * len(times)
        first = 0
        while first < len(targets):
            first = self._decode_run(targets, first, convert, results)
        if self.decoded == 0:
            raise VideoError(
                ErrorCode.DECODE_ERROR,
                self._deadline.uri,
                "no frame could be decoded; the video stream is damaged or empty",
            )
        return [[results[i] for i in row] for row in inverse.reshape(times.shape)]

    def every_frame(self, targets: list[float]) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time, frame) of the stream from its first frame on, in one pass; in H.264 and HEVC
        non-reference frames far from every one of the sorted `targets` are skipped."""
        self._max_decoded = None
        return self._frames_from(self._start_s, targets)

    def frames_until_end(self) -> int:
        """Frame count implied by the last frame decoded, at the average rate."""
        if self.last_time is None:
            return 0
        return round((self.last_time - self._start_s) / self._interval) + 1

    def _decode_run(
        self,
        targets: list[float],
        first: int,
        convert: Callable[[av.VideoFrame], T],
        results: list,
    ) -> int:
        """Seek towards targets[first] and decode on; returns the first target left undone."""
        matcher: NearestFrameMatcher[av.VideoFrame] = NearestFrameMatcher(targets[first:])
        last_frame, last_result = None, None

        def settle(assignments: list[tuple[av.VideoFrame, list[int]]]) -> None:
            nonlocal last_frame, last_result
            for frame, indices in assignments:
                if frame is not last_frame:
                    last_frame, last_result = frame, convert(frame)
                    self._deadline.check()
                for index in indices:
                    results[first + index] = last_result

        for frame_time, frame in self._frames_from(targets[first], targets):
            settle(matcher.offer(frame_time, frame))
            if matcher.done:
                return len(targets)
            pending = matcher.pending
            # A run settles at least one target before it may hand over to a new seek.
            if len(pending) < len(targets) - first and self._worth_seeking(frame_time, pending[0]):
                return len(targets) - len(pending)
        settle(matcher.finish())
        last = self.last_time
        self.ended_early = last is None or targets[-1] > last + 1.5 * self._interval
        return len(targets)

    def _frames_from(
        self, start: float, targets: list[float]
    ) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time, frame) from the keyframe before `start` on.

        Some seeks land late: formats searched by timestamp rather than by a keyframe index
        (MPEG-TS) land on any frame, and the decoder then waits for the next keyframe. Such a
        seek is retried further back, by at least twice the overshoot, then from the start.
        """
        seek_to, step = start, _SEEK_BACKOFF_S
        while True:
            self._seek(seek_to)
            frames = self._decoded_frames(targets)
            first = next(frames, None)
            if seek_to <= self._start_s or (
                first is not None and first[0] <= start + self._interval / 2
            ):
                break
            if first is None:  # nothing decodable after that point (e.g. the file is cut short)
                seek_to = self._start_s
            else:
                step = max(2 * step, 2 * (first[0] - start))
                seek_to = max(self._start_s, start - step)
        if first is None:
            return
        if first[0] < start - _SEEK_GAP_S and len(self._stream.index_entries) < 2:
            self._blind_seeks_land_near = False
        yield first
        yield from frames

    def _seek(self, seconds: float) -> None:
        if self._fresh and seconds <= self._start_s + self._interval / 2:
            self._fresh = False
            return
        self._fresh = False
        if seconds > self._start_s:
            try:
                self._container.seek(self._pts(seconds), stream=self._stream, backward=True)
                return
            except av.FFmpegError:
                pass  # some damaged or cut-short files cannot seek forward; rewinding still works
        self._rewind()

    def _rewind(self) -> None:
        """Back to the first packet. A timestamp seek to the stream's start can land later in
        formats searched by timestamp (MPEG-TS); seeking the file to 0, as the reference recipe
        does, has not in any container tried."""
        try:
            self._container.seek(0)
        except av.FFmpegError as error:
            raise VideoError(
                ErrorCode.DECODE_ERROR,
                self._deadline.uri,
                f"cannot seek in the video ({error}); the file is damaged or cut short",
            ) from error

    def _pts(self, seconds: float) -> int:
        return floor(Fraction(seconds) / self._stream.time_base)

    def _worth_seeking(self, position: float, target: float) -> bool:
        if target - position <= _SEEK_GAP_S:
            return False
        index = self._stream.index_entries
        if len(index) < 2:
            return self._blind_seeks_land_near
        time_base = self._stream.time_base
        keyframe = index.search_timestamp(self._pts(target), backward=True)
        return keyframe >= 0 and index[keyframe].timestamp * time_base > position

    def _decoded_frames(self, targets: list[float]) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decode packets in order, skipping non-reference frames far from every target."""
        context = self._stream.codec_context
        skippable = context.name in _SKIP_NONREF_DECODERS
        time_base = float(self._stream.time_base)
        needed = _NeedTest(targets, _PROTECTED_INTERVALS * self._interval)
        packets = self._container.demux(self._stream)
        while True:
            self._deadline.check()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError:  # damaged or cut-off data: drain the decoder, then stop
                self.corrupt += 1
                yield from self._decode(None)
                return
            if skippable:
                far = packet.pts is not None and not needed(packet.pts * time_base)
                context.skip_frame = "NONREF" if far else "DEFAULT"
            yield from self._decode(packet)

    def _decode(self, packet: av.Packet | None) -> Iterator[tuple[float, av.VideoFrame]]:
        try:
            frames = self._stream.decode(packet)
        except av.FFmpegError:
            self.corrupt += 1
            return
        for frame in frames:
            self.decoded += 1
            if self._max_decoded is not None and self.decoded > self._max_decoded:
                raise VideoError(
                    ErrorCode.TOO_LARGE,
                    self._deadline.uri,
                    f"a clip needs more than the max_frames_per_clip cap of "
                    f"{self._max_frames_per_clip} decoded frames (sparse keyframes, or no index "
                    "to seek with); raise decode.max_frames_per_clip to accept it",
                )
            self.corrupt += frame.is_corrupt
            frame_time = frame.time
            if frame_time is None:
                previous = self.last_time
                frame_time = self._start_s if previous is None else previous + self._interval
            self.last_time = frame_time
            yield frame_time, frame


class _NeedTest:
    """Whether a time lies within `radius` of one of the sorted `targets`."""

    def __init__(self, targets: list[float], radius: float):
        self._targets = targets
        self._radius = radius

    def __call__(self, seconds: float) -> bool:
        i = bisect_left(self._targets, seconds)
        near = self._targets[max(i - 1, 0) : i + 1]
        return any(abs(t - seconds) <= self._radius for t in near)
