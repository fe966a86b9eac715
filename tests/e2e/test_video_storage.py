"""Opening videos through fsspec, the slow check: a stalled S3 object times out after the stall
timeout."""

from __future__ import annotations

import time

import pytest

from tests.helpers.http import StallingServer
from tests.helpers.video_storage import PROCESSOR, SAMPLING
from vivit_batch.config import DecodeConfig, StorageSection
from vivit_batch.storage import storage_options
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, decode_video


@pytest.mark.slow  # s3fs retries the stalled read about 5 times
def test_a_stalled_s3_object_times_out_after_the_stall_timeout(tmp_path):
    """An S3 endpoint that sends the start of the object and then nothing: the read gives up
    after decode.stall_timeout_s without a byte (s3fs tries it 5 times), not the storage's
    60 s read timeout, and the row is a `timeout`."""
    server = StallingServer(write_video(tmp_path / "v.mp4", num_frames=30).read_bytes())
    options = storage_options(
        StorageSection(endpoint_url=f"http://{server.host}", anon=True, timeout_s=60)
    )
    config = DecodeConfig(timeout_s=120, stall_timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(VideoError) as caught:
            decode_video(
                DecodeRequest(
                    "s3://b/v.mp4", SAMPLING, PROCESSOR, config=config, storage_options=options
                )
            )
    finally:
        server.stop()
    assert caught.value.code == ErrorCode.TIMEOUT
    assert "decode.stall_timeout_s" in str(caught.value)
    assert time.monotonic() - started < 30
