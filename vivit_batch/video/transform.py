"""Decoded frame -> the uint8 pictures the model sees: RGB, display orientation, resize, crop.

Produces what `VivitImageProcessor` makes of the frames the Hugging Face recipe decodes
(`to_ndarray(format="rgb24")`, PIL's antialiased bilinear resize, centre crop), to within a few
rounding differences, at a fraction of the cost.
"""

from __future__ import annotations

from math import ceil

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vivit_batch.processor import ProcessorConfig


class FrameConverter:
    """Turns decoded frames of one video into resized RGB pictures in display orientation.

    YUV->RGB runs in swscale at full size, as `to_ndarray(format="rgb24")` does; the resize is
    torch's uint8 antialiased bilinear, which reproduces PIL's (on torch's intra-op pool: the
    decoding processes keep it to one thread). Measured against `VivitImageProcessor` from 64x48 to
    1920x1080, the mean absolute difference is at most 0.002 (0-255 scale), no pixel off by more
    than 1. Resizing in swscale while converting to RGB makes a clip 6-13% cheaper but differs by
    1.2-1.8 on the parity tests' videos and by 5-11 on the decode benchmark's textured ones (1.2 and
    3 with FULL_CHR_H_INT, at torch's cost): its scaled YUV->RGB path filters chroma and rounds
    differently from the unscaled one. Converting first and then resizing in swscale (BILINEAR,
    whose kernel widens with the downscale factor like PIL's; AREA, BICUBIC and FAST_BILINEAR are
    further off) gets to 0.1-0.2, at twice the cost of torch's.

    swscale runs on `threads` threads, the decoder's count: left to itself it starts one per core
    in every decode actor, and on one core costs 30% more CPU per 720p frame than with one.
    """

    def __init__(self, processor: ProcessorConfig, threads: int = 1):
        self._processor = processor
        self._threads = threads
        self._to_rgb = VideoReformatter()
        self._stored_size: tuple[int, int] | None = None
        self.turns = 0
        """Quarter turns applied (counter-clockwise), as the first frame's display matrix says."""

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        """(height, width, 3) uint8, resized as the processor says, display orientation."""
        size = self._stored_size or self._fix_geometry(frame)
        # Not RGBA, though swscale writes it 8% faster: with FFmpeg 8.1 its left column varies
        # from one conversion of the same frame to the next.
        rgb = self._to_rgb.reformat(frame, format="rgb24", threads=self._threads).to_ndarray()
        if rgb.shape[:2] != size:
            rgb = resize_bilinear(rgb, size)
        return np.rot90(rgb, self.turns) if self.turns else rgb

    def _fix_geometry(self, frame: av.VideoFrame) -> tuple[int, int]:
        """Orientation, and the size to resize stored frames to (returned), for every frame of
        the video (a stream that changes size midway still gives pictures of one size)."""
        self.turns = quarter_turns(frame.rotation)
        sideways = self.turns % 2
        display = (frame.width, frame.height) if sideways else (frame.height, frame.width)
        new_h, new_w = self._processor.resized_size(*display)
        self._stored_size = (new_w, new_h) if sideways else (new_h, new_w)
        return self._stored_size


def resize_bilinear(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(height, width, 3) uint8 -> `size` (height, width), bilinear with antialiasing as PIL.

    The result is a (height, width, 3) view of channel-planar memory, as torch writes it:
    interleaving is left to whoever copies out the crops (`copy_picture`), so that only the
    cropped pixels are interleaved.
    """
    # Imported here: a decode actor imports this package to hand videos to its decoding
    # process, which imports torch itself (`worker.py`); torch would add 1.5 s to each actor.
    import torch

    resized = torch.nn.functional.interpolate(
        torch.from_numpy(picture).permute(2, 0, 1)[None],
        size=size,
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return resized[0].numpy().transpose(1, 2, 0)


def copy_picture(destination: np.ndarray, picture: np.ndarray) -> None:
    """Copy a (height, width, 3) picture into `destination` a channel at a time: 6x faster than
    numpy's own copy for views of channel-planar or rotated memory, and within 0.05 ms of it
    (224x224) for interleaved pictures."""
    for channel in range(3):
        destination[..., channel] = picture[..., channel]


def quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns that display a frame whose display matrix says `rotation`.

    `VideoFrame.rotation` is the display matrix's counter-clockwise angle; ffmpeg's autorotate
    turns the picture by that angle (transpose=cclock for 90, clock for -90/270, both flips for
    180). Angles that are not a multiple of 90 are rounded to the nearest one; a mirroring display
    matrix (rare) is not mirrored back.
    """
    return round(rotation / 90) % 4


def crop_views(
    picture: np.ndarray, processor: ProcessorConfig, spatial_crops: str
) -> list[np.ndarray]:
    """The picture's crops: the centre crop `VivitImageProcessor` takes (zero padding where the
    picture is smaller), or `three` crops along the long side (start, centre, end). Without a
    crop size (`do_center_crop` off) the whole picture is the one view."""
    if not processor.do_center_crop:
        return [picture]
    crop_h, crop_w = processor.crop_height, processor.crop_width
    padded = _pad_to(picture, crop_h, crop_w)
    height, width = padded.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if spatial_crops == "center":
        corners = [(top, left)]
    elif height > width:
        corners = [(0, left), (top, left), (height - crop_h, left)]
    else:
        corners = [(top, 0), (top, left), (top, width - crop_w)]
    return [padded[y : y + crop_h, x : x + crop_w] for y, x in corners]


def _pad_to(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad to at least (height, width), centred with the odd pixel first, as transformers'
    `center_crop` does; unchanged when already large enough."""
    old_h, old_w = picture.shape[:2]
    if old_h >= height and old_w >= width:
        return picture
    new_h, new_w = max(height, old_h), max(width, old_w)
    top, left = ceil((new_h - old_h) / 2), ceil((new_w - old_w) / 2)
    padded = np.zeros((new_h, new_w, picture.shape[2]), picture.dtype)
    padded[top : top + old_h, left : left + old_w] = picture
    return padded
