"""A video's segments, decoded in one sequential pass and handed on a chunk at a time.

`decode_segments` cuts the video as `plan_segments` says and decodes the stream once from its
first frame, giving each segment's frame times the nearest decoded frame, as a clip is sampled.
A segment's clip is assembled as soon as its last frame is decoded and its pictures dropped;
every `decode.segments_per_chunk` segments the clips go out as a `SegmentChunk`. So a decoder
holds about two chunks of clips whatever the video's length, never the whole video's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from vivit_batch.video.decode import (
    DecodeRequest,
    Opener,
    OpenVideo,
    VideoMetadata,
    assemble_clips,
    check_corruption,
    open_source,
    open_video,
)
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.frames import Deadline
from vivit_batch.video.sampling import NearestFrameMatcher, SegmentPlan, plan_segments

UNKNOWN_LENGTH_S = 24 * 3600.0
"""What a stream whose container states neither frame count nor duration is planned for when
decode.max_duration_s is off (its segments end where the stream does)."""


@dataclass
class SegmentChunk:
    first_index: int
    """the index of its first segment in the video"""
    bounds_s: np.ndarray
    """float64 (segments, 2): each segment's start and end, seconds from the first frame"""
    clips: np.ndarray
    """uint8 (segments, views, T, H, W, 3)"""
    metadata: VideoMetadata | None = None
    """the video's, on its last chunk only"""


def decode_segments(request: DecodeRequest, opener: Opener = open_source) -> Iterator[SegmentChunk]:
    """The video's segments' clips (`request.sampling.temporal_views` is "segments"), in chunks
    of `request.config.segments_per_chunk`; the last chunk (never empty) carries the metadata.

    Raises `VideoError` for anything wrong with the video or its storage, possibly after some
    chunks. `decode.timeout_s` applies to each chunk.
    """
    per_chunk = request.config.segments_per_chunk
    deadline = Deadline(request.uri, request.config.timeout_s)
    with open_video(request, deadline, opener) as video:
        info = video.info
        fps = info.sampling_fps
        planned = info.frame_count or round(_planned_length_s(request) * fps)
        plan = plan_segments(planned, request.sampling, fps)
        segments = _SegmentClips(plan, video, request)
        pending: list[np.ndarray] = []
        first = 0
        for clips in segments:
            pending.append(clips)
            if len(pending) > per_chunk:  # at least one stays for the last chunk
                yield SegmentChunk(
                    first,
                    plan.bounds[first : first + per_chunk] / fps,
                    np.stack(pending[:per_chunk]),
                )
                first, pending = first + per_chunk, pending[per_chunk:]
                deadline.restart()
        check_corruption(request.uri, video.decoder)
        frame_count = segments.frame_count
        bounds = plan.bounds[first : first + len(pending)].copy()
        bounds[-1, 1] = min(bounds[-1, 1], frame_count)
        metadata = video.metadata(frame_count)
        metadata.bytes_read = video.source.bytes_fetched()
        yield SegmentChunk(first, bounds / fps, np.stack(pending), metadata)


def _planned_length_s(request: DecodeRequest) -> float:
    return request.config.max_duration_s or UNKNOWN_LENGTH_S


class _SegmentClips:
    """Iterating decodes the video once and yields each segment's clips (views, T, H, W, 3) as
    soon as its last frame is in; segments that would start after the stream's end are left
    out (the header overstated its length). `frame_count` is the video's length after."""

    def __init__(self, plan: SegmentPlan, video: OpenVideo, request: DecodeRequest):
        self._plan = plan
        self._video = video
        self._request = request
        times = video.info.times(plan.positions)
        targets, inverse = np.unique(times, return_inverse=True)
        self._targets: list[float] = targets.tolist()
        self._target_of = inverse.reshape(times.shape)
        """(segments, T): index into `_targets` of each frame of each segment"""
        self._pictures: dict[int, np.ndarray] = {}
        self._converted: tuple[av.VideoFrame | None, np.ndarray] = (None, np.empty(0))
        self.frame_count = int(plan.bounds[-1, 1])
        """as planned, until the stream ends before"""

    def __iter__(self) -> Iterator[np.ndarray]:
        decoder = self._video.decoder
        matcher: NearestFrameMatcher[av.VideoFrame] = NearestFrameMatcher(self._targets)
        completes = self._target_of.max(axis=1)
        """the target whose frame completes each segment"""
        segment = 0
        for frame_time, frame in decoder.every_frame(self._targets):
            self._keep(matcher.offer(frame_time, frame))
            while segment < len(completes) and completes[segment] < matcher.settled:
                yield self._clips(segment)
                segment += 1
            if matcher.done:
                break
        else:  # the stream ended before the last segment's last frame time: it ends there
            if decoder.decoded == 0:
                raise VideoError(
                    ErrorCode.DECODE_ERROR,
                    self._request.uri,
                    "no frame could be decoded; the video stream is damaged or empty",
                )
            self._keep(matcher.finish())
            self.frame_count = decoder.frames_until_end()
        starts = self._plan.bounds[:, 0]
        while segment < len(completes) and (segment == 0 or starts[segment] < self.frame_count):
            yield self._clips(segment)
            segment += 1

    def _keep(self, assignments: list[tuple[av.VideoFrame, list[int]]]) -> None:
        """Convert each newly matched frame once (a frame can be matched in two offers)."""
        for frame, indices in assignments:
            if frame is not self._converted[0]:
                self._converted = (frame, self._video.converter(frame))
            for index in indices:
                self._pictures[index] = self._converted[1]

    def _clips(self, segment: int) -> np.ndarray:
        wanted = self._target_of[segment]
        pictures = [[self._pictures[int(i)] for i in wanted]]
        clips = assemble_clips(pictures, self._request.processor, self._request.sampling)
        if segment + 1 < len(self._target_of):  # drop what no later segment needs
            needed_from = int(self._target_of[segment + 1].min())
            for index in [i for i in self._pictures if i < needed_from]:
                del self._pictures[index]
        return clips
