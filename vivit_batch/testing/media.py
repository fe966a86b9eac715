"""Test videos written with PyAV, whose frames say which frame they are.

Each frame carries its index as a row of stripes across the picture's short side: a black guard,
`INDEX_BITS` bits (most significant first), a white guard. The stripes run the full length of the
long side, so any crop along the long side keeps all of them, and they are wide enough to survive
lossy coding at 64x48 and a resize to a 224 short side. The guards also tell the orientation: read
with the stripes in the wrong order or direction, the guards come out wrong and the reader fails.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 10
_STRIPES = INDEX_BITS + 2
_DARK, _LIGHT = 30, 225

_QUIET = {"libx265": {"x265-params": "log-level=error"}}

CONTAINER_FORMATS = {
    ".mp4": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".ts": "mpegts",
}


def has_encoder(codec: str) -> bool:
    """Whether this PyAV wheel can encode `codec`."""
    try:
        av.Codec(codec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def index_picture(index: int, height: int, width: int) -> np.ndarray:
    """The displayed picture of frame `index`: (height, width, 3) uint8, striped as above."""
    bits = [(index >> (INDEX_BITS - 1 - b)) & 1 for b in range(INDEX_BITS)]
    levels = np.array([_DARK, *(_LIGHT if bit else _DARK for bit in bits), _LIGHT], np.float32)
    short = min(height, width)
    stripe_of = np.minimum(np.arange(short) * _STRIPES // short, _STRIPES - 1)
    profile = levels[stripe_of]
    luma = np.broadcast_to(
        profile[:, None] if height <= width else profile[None, :], (height, width)
    )
    picture = np.repeat(luma[..., None], 3, axis=2) + _texture(index, height, width)
    return np.clip(picture, 0, 255).astype(np.uint8)


def _texture(index: int, height: int, width: int) -> np.ndarray:
    """Low-amplitude colour and detail that moves from frame to frame (keeps the bits readable)."""
    y = np.arange(height, dtype=np.float32)[:, None, None]
    x = np.arange(width, dtype=np.float32)[None, :, None]
    phase = np.array([0.0, 2.1, 4.2], np.float32) + 0.3 * index
    return 18 * np.sin(x / 7.0 + phase) * np.cos(y / 5.0 - phase) + 10 * np.sin((x + y) / 31.0)


def detailed_picture(index: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Natural-ish content with edges, gradients, colour and fine detail, moving from frame to
    frame, for resampling comparisons."""
    picture = np.roll(_detailed_scene(height, width, seed), 3 * index, axis=1)
    rng = np.random.default_rng(seed)
    size = max(4, min(height, width) // 5)
    for _ in range(6):
        top, left = rng.integers(0, height), (rng.integers(0, width) + 5 * index) % width
        picture[top : top + size, left : left + size] = rng.integers(0, 256, 3)
    return picture


@functools.lru_cache(maxsize=8)
def _detailed_scene(height: int, width: int, seed: int) -> np.ndarray:
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    base = 128 + 80 * np.sin(2 * np.pi * (x * np.array([1.0, 2.0, 3.0]) + y * 1.5))
    detail = 30 * np.sin(2 * np.pi * x * width / 24) * np.sin(2 * np.pi * y * height / 18)
    noise = np.random.default_rng(seed).normal(0, 6, (height, width, 1))
    scene = np.clip(base + detail + noise, 0, 255).astype(np.uint8)
    scene.flags.writeable = False
    return scene


def read_index(picture: np.ndarray) -> int:
    """The frame index drawn by `index_picture` into a (possibly resized and cropped) picture.

    The stripes run along the picture's long side; in a square crop, along the axis the picture
    varies least.
    """
    luma = picture.astype(np.float32).mean(axis=2)
    across_rows, across_columns = luma.mean(axis=1), luma.mean(axis=0)
    profile = across_rows if across_rows.std() >= across_columns.std() else across_columns
    short = profile.shape[0]
    centres = ((np.arange(_STRIPES) + 0.5) * short / _STRIPES).astype(int)
    bits = [int(profile[c] > (_DARK + _LIGHT) / 2) for c in centres]
    if bits[0] != 0 or bits[-1] != 1:
        raise ValueError(f"guard stripes not found (bits {bits}): wrong orientation?")
    return int("".join(map(str, bits[1:-1])), 2)


def write_video(
    path: Path,
    *,
    num_frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    timestamps: Sequence[float] | None = None,
    gop: int | None = None,
    content: str = "index",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode a video whose displayed frame i is `index_picture(i)` (or `detailed_picture(i)`).

    `width` x `height` is the displayed size; with `rotation` (degrees counter-clockwise, as
    `VideoFrame.rotation` reports it) the stored picture is turned the other way and the stream
    carries a display matrix. `timestamps` (seconds, increasing) makes a variable-frame-rate video.
    """
    turns = (rotation // 90) % 4
    stored_w, stored_h = (height, width) if turns % 2 else (width, height)
    time_base = Fraction(1, fps * 100 if timestamps is not None else fps)
    with av.open(
        str(path), "w", format=CONTAINER_FORMATS[path.suffix], options=container_options or {}
    ) as container:
        stream = container.add_stream(
            codec, rate=fps, options={**_QUIET.get(codec, {}), **(options or {})}
        )
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, pix_fmt
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        draw = index_picture if content == "index" else detailed_picture
        for i in range(num_frames):
            picture = np.ascontiguousarray(np.rot90(draw(i, height, width), -turns))
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            seconds = timestamps[i] if timestamps is not None else i / fps
            frame.pts = round(seconds / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format=CONTAINER_FORMATS[path.suffix]) as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        samples = np.sin(np.arange(int(16000 * seconds), dtype=np.float32) / 10)[None, :]
        for start in range(0, samples.shape[1], 1024):
            chunk = np.ascontiguousarray(samples[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def garble_packets(path: Path, every: int, start: int | None = None) -> list[int]:
    """Overwrite every `every`-th video packet from `start` (default: `every`) on with random
    bytes, in place.

    Returns the indices (in file order) of the packets garbled.
    """
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    garbled = list(range(every if start is None else start, len(spans), every))
    for i in garbled:
        pos, size = spans[i]
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return garbled


def cut_at_frame(path: Path, index: int) -> None:
    """Truncate the file, in place, where the packet of frame `index` (by timestamp) starts."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        cut = next(
            p.pos
            for p in container.demux(stream)
            if p.pts is not None and p.pts * p.time_base * rate >= index
        )
    path.write_bytes(path.read_bytes()[:cut])
