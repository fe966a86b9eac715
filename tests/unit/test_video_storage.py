"""Opening videos through fsspec: local paths (regular files only), file:// URLs and S3 (a moto
server; a stalling one)."""

from __future__ import annotations

import os
import re

import av
import numpy as np
import pytest

from tests.helpers.s3 import ACCESS_KEY, SECRET_KEY
from tests.helpers.video_storage import PROCESSOR, SAMPLING
from vivit_batch.errors import StorageError
from vivit_batch.storage import InputFile, NotARegularFile, open_input
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, decode_video


def test_local_file_reads_seeks_and_counts_bytes(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 100)
    with open_input(str(path)) as source:
        assert isinstance(source, InputFile) and source.size == 25_600
        assert source.read(10) == bytes(range(10))
        source.seek(-6, 2)
        assert source.tell() == 25_594
        assert source.read() == bytes(range(250, 256))
        assert source.bytes_fetched() == 16


def test_file_url(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    with open_input(path.as_uri()) as source:
        assert source.read() == b"abc"


def test_missing_local_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_input(str(tmp_path / "missing.mp4"))


def test_pipes_and_devices_are_refused_before_any_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")  # no writer: a blocking open would wait for one for good
    for path, kind in [(tmp_path / "pipe.mp4", "a named pipe (FIFO)"), ("/dev/zero", "a device")]:
        with pytest.raises(NotARegularFile, match=re.escape(f"is {kind}, not a regular file")):
            open_input(str(path))
    with pytest.raises(IsADirectoryError):
        open_input(str(tmp_path))


def test_storage_error_maps_to_its_code():
    error = VideoError.from_storage("s3://b/k", StorageError("ReadTimeoutError: read timed out"))
    assert error.code == ErrorCode.STORAGE_ERROR
    assert "ReadTimeoutError: read timed out" in str(error)


@pytest.fixture(scope="module")
def s3_options(s3_server):
    """s3fs storage options for the session's S3 server, with an empty bucket `videos`."""
    s3_server.filesystem().mkdir("videos")
    return {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": s3_server.endpoint_url}


def _upload(path, s3_options, key: str) -> str:
    import s3fs

    s3fs.S3FileSystem(**s3_options, skip_instance_cache=True).put(str(path), f"videos/{key}")
    return f"s3://videos/{key}"


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_s3_video_decodes_like_the_local_file(tmp_path, s3_options):
    path = write_video(tmp_path / "v.mp4", num_frames=60)
    uri = _upload(path, s3_options, "v.mp4")
    remote = decode_video(DecodeRequest(uri, SAMPLING, PROCESSOR, storage_options=s3_options))
    local = decode_video(DecodeRequest(str(path), SAMPLING, PROCESSOR))
    np.testing.assert_array_equal(remote.clips, local.clips)
    assert remote.metadata.num_frames == 60
    assert 0 < remote.metadata.bytes_read <= path.stat().st_size


def test_s3_reads_ranges_around_the_seeks_not_the_whole_object(tmp_path, s3_options):
    path = write_video(
        tmp_path / "big.mp4", num_frames=300, width=160, height=120, gop=30, options={"crf": "4"}
    )
    uri = _upload(path, s3_options, "big.mp4")
    with open_input(uri, s3_options, block_size=64 * 1024) as source:
        with av.open(source) as container:
            stream = container.streams.video[0]
            container.seek(int(8.0 / stream.time_base), stream=stream)
            next(container.decode(stream))
        assert source.bytes_fetched() < 0.5 * path.stat().st_size


def test_missing_s3_object_is_not_found(s3_options):
    with pytest.raises(VideoError) as caught:
        decode_video(
            DecodeRequest(
                "s3://videos/missing.mp4", SAMPLING, PROCESSOR, storage_options=s3_options
            )
        )
    assert caught.value.code == ErrorCode.NOT_FOUND
