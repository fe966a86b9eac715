"""Opening a video container and reading what its header says about the video stream."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.stream import Discard, Disposition

from vivit_batch.storage import InputFile
from vivit_batch.video.errors import ErrorCode, VideoError

FALLBACK_FPS = 25.0
"""Frame rate assumed where the container gives none (ffmpeg's own default)."""
_PROBE_WITHOUT_DECODING = {"skip_frame": "all", "analyzeduration": "500000"}
"""Stream probing decodes nothing, and reads at most half a second of packets for it."""


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about the video stream, before decoding."""

    fps: float | None
    start_s: float
    """Time of the stream's first frame."""
    duration_s: float | None
    frame_count: int | None
    """From the header, else estimated from duration and frame rate; None when neither is known."""
    width: int
    height: int
    codec: str

    @property
    def sampling_fps(self) -> float:
        return self.fps or FALLBACK_FPS

    def times(self, positions: np.ndarray) -> np.ndarray:
        """Timestamps (seconds) of frame positions, at the average frame rate."""
        return self.start_s + positions / self.sampling_fps


def open_container(uri: str, source: InputFile) -> av.container.InputContainer:
    """Open `source` as media. Stream probing decodes nothing: it would decode the first
    keyframe, which seeking then decodes again (10% of the work for a clip near the start of a
    720p video). A format that only reveals the picture size by decoding is probed again."""
    container = _open(uri, source, options=_PROBE_WITHOUT_DECODING)
    if any(s.codec_context is not None and not s.width for s in container.streams.video):
        container.close()
        source.seek(0)
        container = _open(uri, source, options=None)
    if any(n == "image2" or n.endswith("_pipe") for n in container.format.name.split(",")):
        kind = container.format.long_name
        container.close()
        raise VideoError(ErrorCode.UNREADABLE, uri, f"is a still image ({kind}), not a video")
    return container


def _open(uri: str, source: InputFile, options: dict | None) -> av.container.InputContainer:
    try:
        return av.open(source, mode="r", options=options, metadata_errors="ignore")
    except av.FFmpegError as error:
        raise VideoError(
            ErrorCode.UNREADABLE,
            uri,
            f"not a readable media file ({error}); check it is a complete, uncorrupted video",
        ) from error


def select_video_stream(uri: str, container: av.container.InputContainer) -> av.VideoStream:
    """The first video stream that is not cover art; the demuxer then discards the others."""
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        raise VideoError(ErrorCode.NO_VIDEO_STREAM, uri, f"has no video stream (streams: {kinds})")
    stream = videos[0]
    if stream.codec_context is None:
        raise VideoError(
            ErrorCode.DECODE_ERROR,
            uri,
            "this PyAV build has no decoder for its video codec (or the header naming the "
            "codec is damaged)",
        )
    for other in container.streams:
        if other is not stream:
            other.discard = Discard.all
    return stream


def probe_stream(container: av.container.InputContainer, stream: av.VideoStream) -> StreamInfo:
    rate = next((r for r in (stream.average_rate, stream.guessed_rate) if r), None)
    fps = float(rate) if rate else None
    time_base = stream.time_base
    start_s = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
    if stream.duration is not None:
        duration_s = float(stream.duration * time_base)
    elif container.duration is not None:
        duration_s = container.duration / av.time_base
    else:
        duration_s = None
    frame_count = stream.frames or None
    if frame_count is None and duration_s and fps:
        frame_count = max(1, round(duration_s * fps))
    return StreamInfo(
        fps=fps,
        start_s=start_s,
        duration_s=duration_s,
        frame_count=frame_count,
        width=stream.width,
        height=stream.height,
        codec=stream.codec.canonical_name,
    )
