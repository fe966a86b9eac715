"""Byte-level mutations of valid videos: each decodes, in the isolated decoder the job uses, to
clips or to a `VideoError` (one error row), never another exception (which would fail the
job's batch) and never past the hard deadline. A bounded, reproducible number of cases in CI;
`VIVIT_FUZZ_EXAMPLES=2000` for a longer hunt."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError
from vivit_batch.video.isolation import KILL_GRACE_S, IsolatedDecoder

EXAMPLES = int(os.environ.get("VIVIT_FUZZ_EXAMPLES", "50"))
TIMEOUT_S = 3.0
SLACK_S = 20.0
DAMAGED_FILE_CODES = {
    ErrorCode.UNREADABLE,
    ErrorCode.NO_VIDEO_STREAM,
    ErrorCode.DECODE_ERROR,
    ErrorCode.TOO_LARGE,
    ErrorCode.TIMEOUT,
    ErrorCode.DECODE_CRASH,
}
"""What a damaged file may become: never not_found, a storage error or an internal_error (a
bug that the file hit)."""
"""Added to the time bound: this machine is shared and often loaded."""
PROCESSOR = ProcessorConfig(shortest_edge=32, crop_height=32, crop_width=32)
SAMPLING = SamplingConfig(num_frames=4, frame_sample_rate=2)
SEEDS = {  # name: write_video arguments
    "moov-last.mp4": {},
    "faststart.mp4": {"container_options": {"movflags": "faststart"}, "gop": 8},
    "h264.mkv": {"gop": 12},
    "vp9.webm": {"codec": "libvpx-vp9"},
    "mjpeg.avi": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "mpeg4.avi": {"codec": "mpeg4"},
    "h264.ts": {},
}
BOUNDARY_VALUES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("seeds")
    return {
        name: write_video(directory / name, num_frames=24, **kwargs)
        for name, kwargs in SEEDS.items()
    }


@pytest.fixture(scope="module")
def decoder():
    with IsolatedDecoder(DecodeConfig(crash_retries=0)) as decoder:
        yield decoder


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("mutants")


positions = st.integers(min_value=0, max_value=2**31)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), positions, st.integers(1, 255)),
        st.tuples(st.just("overwrite"), positions, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("boundary"), positions, st.sampled_from(BOUNDARY_VALUES)),
        st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), positions, st.integers(1, 512)),
        st.tuples(st.just("repeat"), positions, st.integers(1, 2048)),
        st.tuples(st.just("truncate"), positions, st.just(0)),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, edits: list[tuple]) -> bytes:
    """Apply the edits in order; positions wrap around the current length."""
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] ^= value
        elif kind == "overwrite":
            out[at : at + len(value)] = value[: len(out) - at]
        elif kind == "boundary":  # sizes and counts in headers are mostly big-endian 32-bit
            out[at : at + 4] = value.to_bytes(4, "big")[: len(out) - at]
        elif kind == "insert":
            out[at:at] = value
        elif kind == "delete":
            del out[at : at + value]
        elif kind == "repeat":
            out[at:at] = out[at : at + value]
        else:
            del out[at:]
    return bytes(out)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(sorted(SEEDS)), edits=mutations)
def test_mutated_videos_give_clips_or_an_error_in_bounded_time(
    decoder, seeds, scratch, seed, edits
):
    path = scratch / f"mutant-{seed}"
    path.write_bytes(mutate(seeds[seed].read_bytes(), edits))
    started = time.monotonic()
    try:
        video = decoder.decode(
            DecodeRequest(str(path), SAMPLING, PROCESSOR, config=DecodeConfig(timeout_s=TIMEOUT_S))
        )
    except VideoError as error:
        assert error.code in DAMAGED_FILE_CODES and str(path) in str(error)
    else:
        assert video.clips.dtype == np.uint8 and video.clips.shape == (1, 4, 32, 32, 3)
    assert time.monotonic() - started < TIMEOUT_S + KILL_GRACE_S + SLACK_S


def test_mutate_applies_the_edits_in_order_with_wrapping_positions():
    data = bytes(range(100))
    edits = [("flip", 5, 1), ("insert", 205, b"xy"), ("delete", 0, 3), ("truncate", 50, 0)]
    # byte 5 flipped to 4; b"xy" inserted before it (205 wraps to 5); 3 bytes off the front
    assert mutate(data, edits) == bytes([3, 4]) + b"xy" + bytes([4]) + bytes(range(6, 51))
    assert mutate(data, [("boundary", 98, 0xFFFFFFFF)])[-2:] == b"\xff\xff"
