"""Segments mode, the slow check: a long video decoded in bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest
from vivit_batch.video.segments import decode_segments


@pytest.mark.slow  # 5 s
def test_a_long_video_is_decoded_in_bounded_memory(tmp_path):
    """375 segments of 8 224x224 frames would be 450 MB of clips; a decoder holds about two
    chunks of 4 (4.8 MB each) at a time."""
    video = write_video(tmp_path / "long.mp4", num_frames=3000, fps=30)
    large = ProcessorConfig(shortest_edge=224, crop_height=224, crop_width=224)
    sampling = SamplingConfig(num_frames=8, frame_sample_rate=1, temporal_views="segments")
    long_request = DecodeRequest(
        str(video), sampling, large, config=DecodeConfig(segments_per_chunk=4)
    )
    chunk_bytes = 4 * 8 * 224 * 224 * 3
    tracemalloc.start()
    try:
        count = 0
        for chunk in decode_segments(long_request):
            count += len(chunk.clips)
            del chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 375
    assert peak < 4 * chunk_bytes, f"peak {peak / 2**20:.1f} MiB"
