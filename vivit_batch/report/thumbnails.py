"""The report page's thumbnails: for each example row (`stats.Example`), the frame in the middle of
its clip or segment, decoded from its source at report time by the job's own decoder in the
job's isolation (`IsolatedDecoder`: a file that hangs or crashes the decoder costs its child
process, not the report), `SHORT_SIDE` pixels on its short side, as JPEG bytes. A source that
cannot be read (missing, forbidden, damaged, too slow) gets its error instead, never an
exception. PyAV, and torch in the decoder's parent, are imported only when thumbnails are made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.report.stats import Example
from vivit_batch.video import DecodeRequest, VideoError

SHORT_SIDE = 160
MAX_ASPECT = 3
"""A picture longer than this many times its short side is cropped about its centre."""
TIMEOUT_S = 30.0
"""Most seconds one thumbnail may take (less where decode.timeout_s says less): a stalled
source costs the report this, not the job's five minutes."""
PROCESSOR = ProcessorConfig(shortest_edge=SHORT_SIDE, do_center_crop=False)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thumbnail:
    """A frame as JPEG bytes, or why there is none."""

    jpeg: bytes | None = None
    problem: str | None = None
    """`code: what was wrong`, as the job's error rows say it"""


def make_thumbnails(
    examples: Iterable[Example], decode: DecodeConfig, storage_options: dict | None = None
) -> dict[tuple[str, float], Thumbnail]:
    """By (uri, at_s), one thumbnail per distinct frame of `examples`, decoded one at a time."""
    from vivit_batch.video.isolation import IsolatedDecoder
    from vivit_batch.video.worker import DecoderProcessError

    wanted = list(dict.fromkeys((example.uri, example.at_s) for example in examples))
    timeout_s = min(decode.timeout_s or TIMEOUT_S, TIMEOUT_S)
    config = dataclasses.replace(decode, timeout_s=timeout_s)
    made = {}
    with IsolatedDecoder(config) as decoder:
        for uri, at_s in wanted:
            request = DecodeRequest(
                uri,
                SamplingConfig(num_frames=1),
                PROCESSOR,
                config=config,
                storage_options=storage_options,
                frame_at_s=at_s,
            )
            try:
                picture = decoder.decode(request).clips[0, 0]
                made[uri, at_s] = Thumbnail(jpeg=jpeg_bytes(within_aspect(picture)))
            except VideoError as error:
                made[uri, at_s] = Thumbnail(problem=f"{error.code}: {error.detail}")
            except DecoderProcessError as error:  # the decoding processes, not this source
                made[uri, at_s] = Thumbnail(problem=f"decoder unavailable: {error}")
    shown = sum(thumbnail.jpeg is not None for thumbnail in made.values())
    log.info(f"thumbnails: {shown} of {len(made)} frames decoded from their sources")
    return made


def within_aspect(picture: np.ndarray) -> np.ndarray:
    """`picture` with its long side cut to at most `MAX_ASPECT` times the short one, centred."""
    height, width = picture.shape[:2]
    longest = MAX_ASPECT * min(height, width)
    top, left = max(0, (height - longest) // 2), max(0, (width - longest) // 2)
    return picture[top : top + longest, left : left + longest]


def jpeg_bytes(picture: np.ndarray) -> bytes:
    """A (height, width, 3) uint8 RGB picture as a baseline JPEG, encoded by FFmpeg's mjpeg."""
    import av

    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.height, encoder.width = picture.shape[:2]
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)  # required, and meaningless for one picture
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
    packets = encoder.encode(frame.reformat(format="yuvj420p")) + encoder.encode(None)
    return b"".join(bytes(packet) for packet in packets)
