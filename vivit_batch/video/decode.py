"""One video URI -> uint8 clips ready for the model plus the video's metadata, or a `VideoError`.

Only the frames a clip needs are decoded: seek to the keyframe before the first one, decode
forward, stop after the last one. In H.264 and HEVC, packets far from every sampled time are
decoded with `skip_frame=NONREF`, so the decoder drops those no other frame refers to (most
B-frames). A video that ends before its header says is sampled again over what is there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.storage import InputFile, open_input
from vivit_batch.video.container import (
    StreamInfo,
    open_container,
    probe_stream,
    select_video_stream,
)
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.frames import ClipDecoder, Deadline
from vivit_batch.video.sampling import frame_positions
from vivit_batch.video.transform import FrameConverter, copy_picture, crop_views


@dataclass(frozen=True)
class DecodeRequest:
    """One video to decode, and how: what `decode_video` and `IsolatedDecoder.decode` take,
    and what goes to the decoding process."""

    uri: str
    sampling: SamplingConfig
    processor: ProcessorConfig
    video_id: str = ""
    """seeds the views of temporal_views=random"""
    config: DecodeConfig = DecodeConfig()  # noqa: RUF009 (frozen: sharing it is safe)
    storage_options: dict | None = None
    frame_at_s: float | None = None
    """Decode only the frame nearest this time (seconds from the first frame), resized as
    `processor` says and never cropped, instead of `sampling`'s clips: the report's thumbnails"""


@dataclass
class VideoMetadata:
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None
    """Displayed width (after rotation)."""
    height: int | None = None
    num_frames: int | None = None
    """Frame count from the header, else estimated from duration and frame rate."""
    codec: str | None = None
    clip_start_s: float | None = None
    """Start of the span the views were sampled from, seconds from the first frame."""
    clip_end_s: float | None = None
    """Its end: a clip covers `num_frames * frame_sample_rate` frames, or the whole video."""
    rotation: int = 0
    """Degrees (counter-clockwise) the pictures were turned to display orientation."""
    corrupt_frames: int = 0
    """Packets that failed to decode or frames flagged corrupt, in a video that still gave clips."""
    bytes_read: int | None = None
    decoder: str = "cpu"
    """Which decoder gave the frames: `cpu` (PyAV) or `nvdec` (see `nvdec`)."""


@dataclass
class DecodedVideo:
    clips: np.ndarray
    """uint8 (views, T, H, W, 3); views are temporal-major, then spatial crop."""
    metadata: VideoMetadata


def open_source(request: DecodeRequest) -> InputFile:
    """The video's bytes, from its storage (a decoding worker's come from its actor)."""
    return open_input(
        request.uri, request.storage_options, stall_timeout_s=request.config.stall_timeout_s
    )


Opener = Callable[[DecodeRequest], InputFile]


def decode_video(request: DecodeRequest, opener: Opener = open_source) -> DecodedVideo:
    """Decode the clips `request.sampling` asks for, preprocessed as `request.processor` says,
    from the bytes `opener` gives, on the CPU (`nvdec.decode_on_device`: where
    `request.config.device` says).

    Raises `VideoError` for anything wrong with the video or its storage.
    """
    deadline = Deadline(request.uri, request.config.timeout_s)
    with open_video(request, deadline, opener) as video:
        if request.frame_at_s is None:
            decoded = _decode_clips(request, video)
        else:
            decoded = _decode_frame(request.uri, request.frame_at_s, video)
        decoded.metadata.bytes_read = video.source.bytes_fetched()
        return decoded


@dataclass
class OpenVideo:
    """A video opened for decoding: its source, stream, stream facts, decoder and frame
    converter."""

    source: InputFile
    stream: av.VideoStream
    info: StreamInfo
    decoder: ClipDecoder
    converter: FrameConverter

    def metadata(self, frame_count: int | None) -> VideoMetadata:
        """What is known of the video once decoded, `frame_count` frames long."""
        info, turns = self.info, self.converter.turns
        width, height = (info.height, info.width) if turns % 2 else (info.width, info.height)
        return VideoMetadata(
            duration_s=(
                info.duration_s
                if frame_count is None or frame_count == info.frame_count
                else frame_count / info.sampling_fps
            ),
            fps=info.fps,
            width=width,
            height=height,
            num_frames=frame_count,
            codec=info.codec,
            rotation=turns * 90,
            corrupt_frames=self.decoder.corrupt,
        )


@contextlib.contextmanager
def open_video(
    request: DecodeRequest, deadline: Deadline, opener: Opener = open_source
) -> Iterator[OpenVideo]:
    """The video of `request` opened and checked against its limits; anything wrong with it or
    its storage, there or in the block, raised as a `VideoError`."""
    uri, config = request.uri, request.config
    if request.sampling.spatial_crops == "three" and not request.processor.do_center_crop:
        raise ValueError(
            "spatial_crops='three' needs a processor with a crop size (do_center_crop)"
        )
    with _as_video_errors(uri), opener(request) as source:
        _check_file_size(uri, source, config)
        with open_container(uri, source) as container:
            stream = select_video_stream(uri, container)
            info = probe_stream(container, stream)
            _check_limits(uri, info, config)
            stream.thread_type = "AUTO"
            stream.thread_count = config.threads
            decoder = ClipDecoder(container, stream, info, deadline, config.max_frames_per_clip)
            converter = FrameConverter(request.processor, config.threads)
            yield OpenVideo(source, stream, info, decoder, converter)


@contextlib.contextmanager
def _as_video_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except VideoError:
        raise
    except av.FFmpegError as error:
        raise VideoError(
            ErrorCode.DECODE_ERROR, uri, f"decoding failed ({error}); the file may be damaged"
        ) from error
    except OSError as error:
        raise VideoError.from_storage(uri, error) from error


def _decode_clips(request: DecodeRequest, video: OpenVideo) -> DecodedVideo:
    uri, sampling, info, decoder = request.uri, request.sampling, video.info, video.decoder
    # Unknown length: sample the first span; if the stream is shorter, the retry below fixes it.
    frame_count = info.frame_count
    positions = frame_positions(frame_count or sampling.span, sampling, request.video_id)
    pictures = decoder.decode_at(info.times(positions), video.converter)
    if decoder.ended_early:  # cut short, or the header overstates: sample what is there
        frame_count = decoder.frames_until_end()
        if info.frame_count and frame_count < min(sampling.frames, info.frame_count):
            raise VideoError(
                ErrorCode.DECODE_ERROR,
                uri,
                f"only {frame_count} of the {info.frame_count} frames the header announces are "
                f"decodable ({decoder.corrupt} packets or frames failed); the file is cut "
                "short or damaged",
            )
        positions = frame_positions(frame_count, sampling, request.video_id)
        pictures = decoder.decode_at(info.times(positions), video.converter)
    check_corruption(uri, decoder)

    metadata = video.metadata(frame_count)
    metadata.clip_start_s, metadata.clip_end_s = clip_span(positions, sampling, info, frame_count)
    return DecodedVideo(assemble_clips(pictures, request.processor, sampling), metadata)


def clip_span(
    positions: np.ndarray, sampling: SamplingConfig, info: StreamInfo, frame_count: int | None
) -> tuple[float, float]:
    """Start and end (seconds from the first frame) of the span the views at `positions` cover,
    in a stream `frame_count` frames long (None: not known)."""
    fps = info.sampling_fps
    span_end = positions.max() + sampling.frame_sample_rate
    return float(positions.min()) / fps, float(min(span_end, frame_count or span_end)) / fps


def _decode_frame(uri: str, at_s: float, video: OpenVideo) -> DecodedVideo:
    """The frame nearest `at_s` as a clip of one: (1, 1, H, W, 3)."""
    times = np.array([[video.info.start_s + at_s]])
    [[picture]] = video.decoder.decode_at(times, video.converter)
    check_corruption(uri, video.decoder)
    metadata = video.metadata(video.info.frame_count)
    metadata.clip_start_s = metadata.clip_end_s = at_s
    return DecodedVideo(np.ascontiguousarray(picture)[None, None], metadata)


def assemble_clips(
    pictures: list[list[np.ndarray]], processor: ProcessorConfig, sampling: SamplingConfig
) -> np.ndarray:
    """(views, T, H, W, 3) from (temporal view, T) pictures: each view with its spatial crops."""
    crops = sampling.num_spatial_crops
    sample = crop_views(pictures[0][0], processor, sampling.spatial_crops)[0]
    clips = np.empty((len(pictures) * crops, len(pictures[0]), *sample.shape), np.uint8)
    for view, row in enumerate(pictures):
        for step, picture in enumerate(row):
            for crop, pixels in enumerate(crop_views(picture, processor, sampling.spatial_crops)):
                copy_picture(clips[view * crops + crop, step], pixels)
    return clips


def _check_file_size(uri: str, source: InputFile, limits: DecodeConfig) -> None:
    if limits.max_file_bytes is not None and source.size and source.size > limits.max_file_bytes:
        raise VideoError(
            ErrorCode.TOO_LARGE,
            uri,
            f"file is {source.size} bytes, above the max_file_bytes cap of "
            f"{limits.max_file_bytes}; raise decode.max_file_bytes to accept it",
        )


def _check_limits(uri: str, info: StreamInfo, limits: DecodeConfig) -> None:
    pixels = info.width * info.height
    if limits.max_pixels is not None and pixels > limits.max_pixels:
        raise VideoError(
            ErrorCode.TOO_LARGE,
            uri,
            f"frames are {info.width}x{info.height}, above the max_pixels cap of "
            f"{limits.max_pixels}; raise decode.max_pixels to accept it",
        )
    if (
        limits.max_duration_s is not None
        and info.duration_s is not None
        and info.duration_s > limits.max_duration_s
    ):
        raise VideoError(
            ErrorCode.TOO_LARGE,
            uri,
            f"video lasts {info.duration_s:.0f} s, above the max_duration_s cap of "
            f"{limits.max_duration_s:g}; raise decode.max_duration_s to accept it",
        )


def check_corruption(uri: str, decoder: ClipDecoder) -> None:
    if decoder.corrupt > decoder.decoded:
        raise VideoError(
            ErrorCode.DECODE_ERROR,
            uri,
            f"{decoder.corrupt} corrupt packets or frames against {decoder.decoded} good ones; "
            "the video stream is too damaged to sample",
        )
