"""Labelled synthetic motion videos, encoded with PyAV: training data, demo data, test data.

Each video shows one light shape (circle, square or triangle) on a darker solid, gradient or
textured background, doing one of `MOTION_CLASSES` at constant speed for the whole video, so any
clip taken from it shows the motion. The object passes the frame centre half-way through the video
(where the job's centred clip and centre crop look), and stays within the middle of the short side.
A timeline video (`write_timeline_video`) strings such motions together, one per phase.

Every video is drawn from its own generator seeded by (seed, index): the same seed gives the same
decoded frames (Matroska and WebM files also carry a random track id), and a video does not
depend on how many others are written with it.

Why light on dark: which way an edge moves is a linear function of the pixels only while the
object's contrast with the background has one sign. With both signs, the tiny ViT must learn a
second-order feature first; in our measurements that took it several times the training budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MOTION_CLASSES = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "zooming in",
    "zooming out",
    "standing still",
)
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("solid", "gradient", "texture")
FRAME_SIZES = (  # (width, height): landscape, portrait, square and unusual aspect ratios
    (320, 240),
    (256, 144),
    (96, 72),
    (160, 120),
    (144, 176),
    (120, 208),
    (200, 200),
    (232, 130),
    (112, 150),
    (176, 96),
)
FPS_RANGE = (12, 30)
FRAME_COUNT_RANGE = (40, 80)
DURATION_RANGE_S = (2.0, 4.0)
BACKGROUND_MAX_LEVEL = 160.0
MIN_LUMA_CONTRAST = 40.0
"""object luma above the background's 95th-percentile luma"""
GRAIN_FIELDS = 5


@dataclass(frozen=True)
class Encoding:
    codec: str
    container: str
    """FFmpeg format name"""
    suffix: str
    pix_fmt: str
    options: dict[str, str]
    bit_rate: int | None = None


ENCODINGS = (
    # mb-tree makes libx264 output differ from run to run (reproducible without it)
    Encoding(
        "libx264",
        "mp4",
        ".mp4",
        "yuv420p",
        {"preset": "veryfast", "crf": "20", "x264-params": "no-mbtree=1"},
    ),
    Encoding("mpeg4", "avi", ".avi", "yuv420p", {}, bit_rate=1_500_000),
    Encoding("libvpx-vp9", "webm", ".webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    Encoding("mjpeg", "matroska", ".mkv", "yuvj420p", {}, bit_rate=4_000_000),
    Encoding(
        "libx265",
        "mov",
        ".mov",
        "yuv420p",
        {"preset": "ultrafast", "crf": "22", "x265-params": "log-level=error"},
    ),
)


@dataclass(frozen=True)
class SampleVideo:
    path: Path
    label: str
    """one of `MOTION_CLASSES`"""
    codec: str
    container: str
    """FFmpeg format name"""
    width: int
    height: int
    fps: int
    num_frames: int


@dataclass(frozen=True)
class Phase:
    label: str
    """one of `MOTION_CLASSES`"""
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TimelineVideo:
    """A video whose motion changes: `phases` in time order, back to back."""

    path: Path
    phases: tuple[Phase, ...]
    width: int
    height: int
    fps: int
    num_frames: int


@dataclass(frozen=True)
class Scene:
    """What one video shows; `render(i)` draws its frame i."""

    shape: str
    colour: np.ndarray
    background: np.ndarray
    """(height, width, 3) float32"""
    start_centre: tuple[float, float]
    """(x, y) in pixels at the first frame"""
    end_centre: tuple[float, float]
    start_radius: float
    end_radius: float
    rotation: float
    grain: np.ndarray | None
    """(k, height, width, 3) float32 sensor noise; frame i gets grain[i % k]"""
    num_frames: int

    def render(self, index: int) -> np.ndarray:
        progress = index / (self.num_frames - 1)
        x = self.start_centre[0] + progress * (self.end_centre[0] - self.start_centre[0])
        y = self.start_centre[1] + progress * (self.end_centre[1] - self.start_centre[1])
        radius = self.start_radius + progress * (self.end_radius - self.start_radius)
        picture = self.background.copy()
        height, width = picture.shape[:2]
        # only the shape's bounding box changes: draw there
        top, bottom = max(int(y - radius) - 2, 0), min(int(y + radius) + 3, height)
        left, right = max(int(x - radius) - 2, 0), min(int(x + radius) + 3, width)
        if top < bottom and left < right:
            window = picture[top:bottom, left:right]
            alpha = shape_coverage(
                self.shape, window.shape[:2], (x - left, y - top), radius, self.rotation
            )
            window += alpha[..., None] * (self.colour - window)
        if self.grain is not None:
            picture += self.grain[index % len(self.grain)]
        return np.clip(picture + 0.5, 0, 255).astype(np.uint8)


def available_encodings() -> tuple[Encoding, ...]:
    """The `ENCODINGS` whose encoder this PyAV build has."""
    return tuple(encoding for encoding in ENCODINGS if _has_encoder(encoding.codec))


def write_sample_set(
    directory: str | Path, count: int, seed: int, *, corrupt: int = 0
) -> list[SampleVideo]:
    """Write `count` labelled videos (classes and encodings in turn) and `corrupt` broken files.

    Returns the good videos only; the corrupt ones are `corrupt_000.mp4`, ... in `directory`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    videos = [write_sample_video(directory, index, seed) for index in range(count)]
    for index in range(corrupt):
        write_corrupt_video(directory / f"corrupt_{index:03d}.mp4")
    return videos


def write_sample_video(directory: Path, index: int, seed: int) -> SampleVideo:
    """Video `index` of the set for `seed`: its class and encoding cycle with the index."""
    rng = np.random.default_rng([seed, index])
    label = MOTION_CLASSES[index % len(MOTION_CLASSES)]
    encodings = available_encodings()
    encoding = encodings[index % len(encodings)]
    width, height = FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
    fps = int(rng.integers(FPS_RANGE[0], FPS_RANGE[1] + 1))
    num_frames = _frame_count(rng, fps)
    scene = random_scene(rng, label, width, height, num_frames)
    path = directory / f"video_{index:03d}{encoding.suffix}"
    encode_frames(path, (scene.render(i) for i in range(num_frames)), encoding, fps)
    return SampleVideo(
        path, label, encoding.codec, encoding.container, width, height, fps, num_frames
    )


def write_timeline_video(
    path: str | Path,
    phases: Sequence[tuple[str, int]],
    seed: int,
    *,
    fps: int = 24,
    size: tuple[int, int] = (128, 128),
) -> TimelineVideo:
    """One object on one background doing each (class, frame count) of `phases` in turn; libx264.

    Each phase is a sample video's whole trajectory squeezed into the phase, so any clip inside it
    shows its class. The default square frame is all the centre crop sees: movers, which cross
    most of the frame, stay in view for the whole phase. Phases of 2-4 s are like training videos;
    a longer phase moves slower, and its zooms' small ends get harder for the demo model to tell.
    """
    path = Path(path)
    width, height = size
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, "standing still", width, height, num_frames=2)
    scenes = [_phase_scene(rng, scene, label, frames) for label, frames in phases]
    frames = (phase.render(i) for phase in scenes for i in range(phase.num_frames))
    encode_frames(path, frames, ENCODINGS[0], fps)
    seconds = np.cumsum([0, *(count for _, count in phases)]) / fps
    timeline = tuple(
        Phase(label, float(seconds[i]), float(seconds[i + 1]))
        for i, (label, _) in enumerate(phases)
    )
    return TimelineVideo(path, timeline, width, height, fps, sum(count for _, count in phases))


def _phase_scene(rng: np.random.Generator, scene: Scene, label: str, num_frames: int) -> Scene:
    """`scene`'s object and background doing `label` over `num_frames` frames."""
    height, width = scene.background.shape[:2]
    start, end, start_radius, end_radius = _trajectory(rng, label, width, height)
    short = min(width, height)
    return replace(
        scene,
        start_centre=start,
        end_centre=end,
        start_radius=start_radius * short,
        end_radius=end_radius * short,
        num_frames=num_frames,
    )


def random_scene(
    rng: np.random.Generator, label: str, width: int, height: int, num_frames: int
) -> Scene:
    short = min(width, height)
    background = random_background(rng, width, height)
    start, end, start_radius, end_radius = _trajectory(rng, label, width, height)
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=_light_colour(rng, background),
        background=background,
        start_centre=start,
        end_centre=end,
        start_radius=start_radius * short,
        end_radius=end_radius * short,
        rotation=float(rng.uniform(0, 2 * np.pi)),
        grain=_random_grain(rng, width, height),
        num_frames=num_frames,
    )


def _trajectory(
    rng: np.random.Generator, label: str, width: int, height: int
) -> tuple[tuple[float, float], tuple[float, float], float, float]:
    """(start centre, end centre, start radius, end radius); radii relative to the short side.

    Movers cross most of the frame; zooms grow or shrink at least threefold. Both are centred
    on the middle of the video, so the clip the job samples sees the motion at the frame centre.
    """
    short = min(width, height)
    middle = (
        width / 2 + rng.uniform(-0.12, 0.12) * short,
        height / 2 + rng.uniform(-0.12, 0.12) * short,
    )
    if label.startswith("moving"):
        radius = rng.uniform(0.08, 0.16)
        horizontal = label in ("moving left", "moving right")
        sign = -1.0 if label in ("moving left", "moving up") else 1.0
        extent = (width if horizontal else height) - 2 * radius * short
        half_travel = sign * rng.uniform(0.3, 0.5) * extent
        step = (half_travel, 0.0) if horizontal else (0.0, half_travel)
        start = (middle[0] - step[0], middle[1] - step[1])
        end = (middle[0] + step[0], middle[1] + step[1])
        return start, end, radius, radius
    if label.startswith("zooming"):
        small, large = rng.uniform(0.04, 0.08), rng.uniform(0.3, 0.42)
        radii = (small, large) if label == "zooming in" else (large, small)
        return middle, middle, *radii
    radius = rng.uniform(0.06, 0.3)
    return middle, middle, radius, radius


def random_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) float32: a solid colour, a linear gradient or a smooth texture."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top = BACKGROUND_MAX_LEVEL
    if kind == "solid":
        return np.broadcast_to(rng.uniform(0, top, 3), (height, width, 3)).astype(np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * x + np.sin(angle) * y) / max(width, height)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        first, second = rng.uniform(0, top, 3), rng.uniform(0, top, 3)
        return (first + ramp[..., None] * (second - first)).astype(np.float32)
    picture = np.broadcast_to(rng.uniform(0.25 * top, 0.75 * top, 3), (height, width, 3))
    for _ in range(4):
        frequency = rng.uniform(0.02, 0.15, 2)
        wave = np.sin(frequency[0] * x + frequency[1] * y + rng.uniform(0, 2 * np.pi))
        picture = picture + wave[..., None] * rng.uniform(-0.12 * top, 0.12 * top, 3)
    return np.clip(picture, 0, top).astype(np.float32)


def shape_coverage(
    shape: str, size: tuple[int, int], centre: tuple[float, float], radius: float, rotation: float
) -> np.ndarray:
    """(height, width) float32 in [0, 1]: how much of each pixel the shape covers (anti-aliased)."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = x + 0.5 - centre[0], y + 0.5 - centre[1]
    if shape == "circle":
        distance = np.hypot(dx, dy) - radius
    else:
        corners = 4 if shape == "square" else 3
        # inside a regular polygon = inside every edge's half-plane; `radius` is the circumradius
        normals = rotation + 2 * np.pi * (np.arange(corners) + 0.5) / corners
        edges = np.cos(normals)[:, None, None] * dx + np.sin(normals)[:, None, None] * dy
        distance = edges.max(axis=0) - radius * np.cos(np.pi / corners)
    return np.clip(0.5 - distance, 0.0, 1.0)


def encode_frames(path: Path, frames: Iterable[np.ndarray], encoding: Encoding, fps: int) -> None:
    """Encode uint8 (height, width, 3) frames at a constant `fps`; one thread, so reproducible."""
    with av.open(str(path), "w", format=encoding.container) as container:
        stream = container.add_stream(encoding.codec, rate=fps, options=dict(encoding.options))
        stream.pix_fmt = encoding.pix_fmt
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = Fraction(1, fps)
        if encoding.bit_rate:
            stream.bit_rate = encoding.bit_rate
        for index, picture in enumerate(frames):
            if index == 0:
                stream.height, stream.width = picture.shape[:2]
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_corrupt_video(path: str | Path) -> Path:
    """A truncated MP4 upload: the start of a real file, cut before the index players need."""
    path = Path(path)
    black = np.zeros((48, 64, 3), np.uint8)
    encode_frames(path, (black for _ in range(12)), available_encodings()[0], fps=12)
    path.write_bytes(path.read_bytes()[:512])
    return path


def _frame_count(rng: np.random.Generator, fps: int) -> int:
    """A length of 2-4 s, kept within `FRAME_COUNT_RANGE` frames so clips span much of it."""
    low = max(FRAME_COUNT_RANGE[0], round(DURATION_RANGE_S[0] * fps))
    high = min(FRAME_COUNT_RANGE[1], round(DURATION_RANGE_S[1] * fps))
    return int(rng.integers(low, high + 1))


def _random_grain(rng: np.random.Generator, width: int, height: int) -> np.ndarray | None:
    """No noise for half the videos; else a few noise fields that the frames cycle through."""
    if rng.random() < 0.5:
        return None
    sigma = np.float32(rng.uniform(1, 4))
    return sigma * rng.standard_normal((GRAIN_FIELDS, height, width, 3), dtype=np.float32)


def _light_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose luma is `MIN_LUMA_CONTRAST` above nearly all of the background's."""
    floor = np.percentile(_luma(background), 95) + MIN_LUMA_CONTRAST
    while True:
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if _luma(colour) >= floor:
            return colour


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _has_encoder(codec: str) -> bool:
    try:
        av.Codec(codec, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True
