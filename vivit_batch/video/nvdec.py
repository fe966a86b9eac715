"""Decoding on the GPU's video engines (`decode.device` puts a decode actor there): the clip's
frames decoded by NVDEC through PyNvVideoCodec, converted to RGB, turned, resized and cropped on
the GPU, then handed on as the CPU path's clips are.

The video is first opened as the CPU path opens it (PyAV reads the container's header, and its
first frame for the orientation and colour tags), so the same limits, the same checks and the
same error codes apply. What NVDEC is not given (a codec it has no engine for, a picture format
other than 8-bit 4:2:0, colour tags `rgb_as_swscale` does not know, frames not `evenly_timed`,
a frame beyond the stream's end) or what fails on it is decoded by the CPU path instead,
in the same process: a video's row does not depend on which decoder took it, only its cost
does, with one exception: NVDEC conceals damage in the stream where the CPU path counts it
(`corrupt_frames` stays 0, and a stream too damaged for the CPU path may still give clips).
Segments and thumbnails are always decoded on the CPU.

NVDEC hands over the decoded YUV planes (H.264 and HEVC decoding is exact, so they are the CPU
decoder's); they become RGB by the CPU path's own arithmetic (`rgb_as_swscale`: the same bytes)
and are resized by torch's antialiased bilinear in floats, rounded (the CPU path runs its uint8
kernel of the same filter): within one level of the CPU path's pixels (BENCHMARKS.md, NVDEC).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import av
import numpy as np

from vivit_batch.config import NVDEC_REQUIREMENT
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


def nvdec_installed() -> bool:
    """Whether PyNvVideoCodec can be imported here (found, not imported: importing it loads the
    CUDA driver)."""
    return importlib.util.find_spec("PyNvVideoCodec") is not None


def nvdec_unavailable() -> str | None:
    """Why NVDEC cannot decode on this node, with the fix, or None where it can: PyNvVideoCodec
    not installed, or its import failing. Its import loads the driver's video libraries
    (libnvcuvid, and libnvidia-encode, without which it refuses to load at all), which a
    container gets only with the NVIDIA container toolkit's `video` capability, one that CUDA
    images commonly leave out (`compute,utility`). Tried in a child process, as the decoding
    workers would import it: the import needs nothing of this one."""
    if not nvdec_installed():
        return f"PyNvVideoCodec is not installed on this node (pip install {NVDEC_REQUIREMENT})"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "PyNvVideoCodec's import did not finish within 60 s on this node"
    if probe.returncode == 0:
        return None
    said = probe.stdout.strip() or probe.stderr.strip()[-300:]
    return (
        f"PyNvVideoCodec cannot be loaded on this node ({said}). It needs the NVIDIA driver's "
        "video libraries (libnvcuvid, libnvidia-encode): in a container, "
        "NVIDIA_DRIVER_CAPABILITIES must include video (compute,utility,video)"
    )


_IMPORT_PROBE = """
try:
    import PyNvVideoCodec
except Exception as error:
    said = str(error).strip().splitlines()
    print(type(error).__name__ + (": " + said[0] if said else ""))
    raise SystemExit(1)
"""


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
        if not evenly_timed(video.stream, info.frame_count):
            return None
        first = _first_frame(video)
        if first.format.name not in YUV420 or first.colorspace not in SWSCALE_COEFFICIENTS:
            return None
        video.converter.turns = quarter_turns(first.rotation)
        positions = frame_positions(info.frame_count, request.sampling, request.video_id)
        wanted = sorted(set(positions.flatten().tolist()))
        video.source.seek(0)
        planes = _nvdec_planes(video.source, wanted, info.height, info.width)
        deadline.check()
        if planes is None:
            return None
        colour = (first.colorspace, first.color_range == FULL_RANGE)
        pictures = pictures_from_planes(planes, colour, request.processor, video.converter.turns)
        by_position = dict(zip(wanted, pictures, strict=True))
        nested = [[by_position[p] for p in row] for row in positions.tolist()]
        metadata = video.metadata(info.frame_count)
        metadata.clip_start_s, metadata.clip_end_s = clip_span(
            positions, request.sampling, info, info.frame_count
        )
        metadata.bytes_read = video.source.bytes_fetched()
        metadata.decoder = "nvdec"
        return DecodedVideo(assemble_clips(nested, request.processor, request.sampling), metadata)


def evenly_timed(stream: av.VideoStream, frame_count: int) -> bool:
    """Whether the container's index lists every frame (MP4, MOV) and 64 of its intervals,
    spread over the stream, are all equal: then the frame nearest each time the CPU path
    samples (at the average rate) is the frame of that index, which is how NVDEC's frames are
    asked for. Containers that index keyframes only (Matroska, WebM) or nothing (MPEG-TS) say
    nothing reliable of variable frame rates (a Matroska file's average and base rates agree
    either way): their videos go to the CPU path."""
    entries = stream.index_entries
    if len(entries) < max(frame_count, 2):
        return False
    starts = np.linspace(0, len(entries) - 2, num=min(64, len(entries) - 1)).astype(int)
    intervals = {entries[i + 1].timestamp - entries[i].timestamp for i in starts.tolist()}
    return len(intervals) == 1


def _first_frame(video: OpenVideo) -> av.VideoFrame:
    """The stream's first frame, decoded on the CPU: its display matrix (the orientation) and
    colour tags are what PyAV gives with frames only."""
    [[frame]] = video.decoder.decode_at(np.array([[video.info.start_s]]), lambda f: f)
    return frame


def _nvdec_planes(source: InputFile, indices: list[int], height: int, width: int):
    """The frames at `indices` (sorted, unique) from NVDEC on the first GPU this process sees
    (Ray makes it the one the actor was given), as uint8 planes on the GPU: luma (N, H, W) and
    chroma (N, H/2, W/2) U and V; None when the stream has fewer frames than its header said.
    ValueError when NVDEC's pictures are not the NV12 of the size PyAV read."""
    import PyNvVideoCodec as nvc
    import torch

    decoder = nvc.SimpleDecoder(
        source, use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE
    )
    if indices[-1] >= len(decoder):
        return None
    chroma_height, chroma_width = (height + 1) // 2, (width + 1) // 2
    nv12_shape = (height + chroma_height, 2 * chroma_width)
    frames = [torch.from_dlpack(f) for f in decoder.get_batch_frames_by_index(indices)]
    if any(frame.numel() != nv12_shape[0] * nv12_shape[1] for frame in frames):
        shapes = sorted({tuple(frame.shape) for frame in frames})
        raise ValueError(f"NVDEC gave {shapes} for a {width}x{height} NV12 frame")
    # One plane of rows, whether the frame comes as (rows, columns) or with a unit axis
    nv12 = torch.stack([frame.reshape(nv12_shape) for frame in frames])
    chroma = nv12[:, height:].reshape(len(indices), chroma_height, chroma_width, 2)
    return nv12[:, :height, :width], chroma[..., 0], chroma[..., 1]


def pictures_from_planes(planes, colour: tuple[int, bool], processor: ProcessorConfig, turns: int):
    """Decoded planes (luma, u, v: uint8, (N, H, W) and (N, H/2, W/2), where they are) as the
    pictures the CPU path makes of those frames, on the host: (N, h, w, 3) uint8 in display
    orientation (`turns`), resized as `processor` says, `colour` being the frames' colour
    matrix (AVColorSpace) and full range; `FRAMES_AT_ONCE` frames at a time."""
    colorspace, full_range = colour
    chunks = zip(*(plane.split(FRAMES_AT_ONCE) for plane in planes), strict=True)
    return np.concatenate(
        [
            resized_on_device(rgb_as_swscale(luma, u, v, colorspace, full_range), processor, turns)
            .cpu()
            .numpy()
            for luma, u, v in chunks
        ]
    )


FRAMES_AT_ONCE = 8
"""Frames converted and resized at a time: the integer and float steps of eight 720p frames
take about 250 MB of the GPU's memory, in each decoding process (a clip's 32 at once, 1 GB)."""
YUV420 = frozenset({"yuv420p", "yuvj420p"})
"""The picture formats NVDEC's NV12 is taken from (8-bit 4:2:0)."""
FULL_RANGE = 2
"""AVCOL_RANGE_JPEG: luma 0-255 (else 16-235)."""
_BT601 = (104597, 132201, 25675, 53279)
SWSCALE_COEFFICIENTS = {1: (117489, 138438, 13975, 34925), 2: _BT601, 5: _BT601, 6: _BT601}
"""libswscale's `ff_yuv2rgb_coeffs` (crv, cbu, cgu, cgv in 16.16 fixed point) for the colour
matrices (AVColorSpace) checked against it: BT.709, and BT.601 (untagged, BT.470BG, SMPTE 170M);
others are decoded on the CPU."""


def rgb_as_swscale(luma, u, v, colorspace: int, full_range: bool):
    """Planes of 8-bit 4:2:0 pictures, where they are -> (N, H, W, 3) uint8 RGB, computed as the
    CPU path's `to_ndarray(format="rgb24")` computes it on x86 (FFmpeg's unscaled converter,
    libswscale/x86/yuv_2_rgb.asm): chroma repeated over 2x2 pixels, 13-bit coefficients, each
    product truncated. The same bytes (tests/unit/test_gpu_decoding.py)."""
    import torch

    height, width = luma.shape[1:]
    crv, cbu, cgu, cgv = SWSCALE_COEFFICIENTS[colorspace]
    if full_range:
        crv, cbu, cgu, cgv = (c * 224 // 255 for c in (crv, cbu, cgu, cgv))
        cy, black = 1 << 16, 0
    else:
        cy, black = (1 << 16) * 255 // 219, 16

    def times(x, coefficient: int):  # pmulhw by the coefficient at 13 bits
        return (x * ((coefficient + 4) >> 3)) >> 16

    def spread(chroma):
        doubled = chroma.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        return (doubled[:, :height, :width].to(torch.int32) << 3) - (128 << 3)

    y = times((luma.to(torch.int32) << 3) - (black << 3), cy)
    u, v = spread(u), spread(v)
    rgb = (y + times(v, crv), y + times(u, -cgu) + times(v, -cgv), y + times(u, cbu))
    return torch.stack(rgb, dim=-1).clamp_(0, 255).to(torch.uint8)


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
