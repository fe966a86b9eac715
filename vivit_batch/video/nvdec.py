"""Decoding on the GPU's video engines (`decode.device` puts a decode actor there): the clip's
frames decoded by NVDEC through PyNvVideoCodec, converted to RGB, turned, resized and cropped on
the GPU, then handed on as the CPU path's clips are.

The video is first opened as the CPU path opens it (PyAV reads the container's header, and one
frame for its display orientation), so the same limits, the same checks and the same error
codes apply. What NVDEC is not given (a codec it has no engine for, a length the header does not
state, a frame beyond the stream's end) or what fails on it is decoded by the CPU path instead,
in the same process: a video's row never depends on which decoder took it, only its cost does.
Segments and thumbnails are always decoded on the CPU.

The pictures are resized by torch's antialiased bilinear in floats, rounded (the CPU path runs
its uint8 kernel of the same filter): within one level of the CPU path's pixels
(BENCHMARKS.md, NVDEC).
"""

from __future__ import annotations

import logging

import numpy as np

from vivit_batch.processor import ProcessorConfig
from vivit_batch.storage import InputFile
from vivit_batch.video.decode import (
    DecodedVideo,
    DecodeRequest,
    Opener,
    OpenVideo,
    assemble_clips,
    clip_span,
    decode_video,
    open_source,
    open_video,
)
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.frames import Deadline
from vivit_batch.video.sampling import frame_positions
from vivit_batch.video.transform import quarter_turns

log = logging.getLogger(__name__)

NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg1video", "mpeg2video"})
"""FFmpeg's names of the codecs NVDEC decodes on every GPU since Ampere (AV1 from Ampere on);
MPEG-4 part 2, VC-1 and MJPEG are left to the CPU."""


def decode_on_device(request: DecodeRequest, opener: Opener = open_source) -> DecodedVideo:
    """`decode_video`, on the device `request.config.device` names: `cuda` on NVDEC
    (`decode_video_on_gpu`), else on the CPU."""
    if request.config.device == "cuda":
        return decode_video_on_gpu(request, opener)
    return decode_video(request, opener)


def decode_video_on_gpu(request: DecodeRequest, opener: Opener = open_source) -> DecodedVideo:
    """`decode_video`'s result for `request`, its clip's frames decoded by NVDEC where it takes
    them (see the module's docstring), else by the CPU path. Raises `VideoError` as it does."""
    if request.sampling.segments or request.frame_at_s is not None:
        return decode_video(request, opener)
    try:
        decoded = nvdec_clips(request, opener)
    except VideoError as error:
        if error.code == ErrorCode.TIMEOUT:
            raise  # decoding it again would double the time it took
        decoded = None  # the CPU path says what is wrong with it, in its words
    except Exception as error:  # noqa: BLE001 (NVDEC refused it: the CPU path decides)
        log.info("NVDEC could not decode %s (%s); decoding it on the CPU", request.uri, error)
        decoded = None
    return decoded or decode_video(request, opener)


def nvdec_clips(request: DecodeRequest, opener: Opener = open_source) -> DecodedVideo | None:
    """The clips as NVDEC decodes them, or None for a video it is not given."""
    deadline = Deadline(request.uri, request.config.timeout_s)
    with open_video(request, deadline, opener) as video:
        info = video.info
        if info.codec not in NVDEC_CODECS or not info.frame_count:
            return None
        video.converter.turns = quarter_turns(_first_frame(video).rotation)
        positions = frame_positions(info.frame_count, request.sampling, request.video_id)
        wanted = sorted(set(positions.flatten().tolist()))
        video.source.seek(0)
        frames = _nvdec_frames(video.source, wanted)
        deadline.check()
        if frames is None:
            return None
        pictures = resized_on_device(frames, request.processor, video.converter.turns)
        by_position = dict(zip(wanted, pictures.cpu().numpy(), strict=True))
        nested = [[by_position[p] for p in row] for row in positions.tolist()]
        metadata = video.metadata(info.frame_count)
        metadata.clip_start_s, metadata.clip_end_s = clip_span(
            positions, request.sampling, info, info.frame_count
        )
        metadata.bytes_read = video.source.bytes_fetched()
        return DecodedVideo(assemble_clips(nested, request.processor, request.sampling), metadata)


def _first_frame(video: OpenVideo):
    """The stream's first frame, decoded on the CPU: its display matrix (the orientation) is
    side data that PyAV gives with frames only."""
    [[frame]] = video.decoder.decode_at(np.array([[video.info.start_s]]), lambda f: f)
    return frame


def _nvdec_frames(source: InputFile, indices: list[int]):
    """The frames at `indices` (sorted, unique) from NVDEC on the first GPU this process sees
    (Ray makes it the one the actor was given): (N, H, W, 3) uint8 RGB on the GPU; None when
    the stream has fewer frames than its header said."""
    import PyNvVideoCodec as nvc
    import torch

    decoder = nvc.SimpleDecoder(
        source,
        use_device_memory=True,
        output_color_type=nvc.OutputColorType.RGB,
    )
    if indices[-1] >= len(decoder):
        return None
    frames = decoder.get_batch_frames_by_index(indices)
    return torch.stack([torch.from_dlpack(frame) for frame in frames])


def resized_on_device(frames, processor: ProcessorConfig, turns: int = 0):
    """(N, H, W, 3) uint8 frames, where they are -> (N, h, w, 3) uint8 pictures in display
    orientation, resized as `processor` says: torch's antialiased bilinear (PIL's filter) in
    float, rounded. Cropping is left to `assemble_clips`, as on the CPU path."""
    import torch

    pictures = torch.rot90(frames, turns, dims=(1, 2)) if turns else frames
    new_h, new_w = processor.resized_size(*pictures.shape[1:3])
    if (new_h, new_w) == tuple(pictures.shape[1:3]):
        return pictures
    resized = torch.nn.functional.interpolate(
        pictures.permute(0, 3, 1, 2).float(),
        size=(new_h, new_w),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
