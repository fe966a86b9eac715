"""Bad inputs give the right `VideoError` code (or, when enough is decodable, a clip)."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import pytest

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.media import (
    cut_at_frame,
    garble_packets,
    read_index,
    write_audio_only,
    write_video,
)
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, decode_video
from vivit_batch.video.sampling import frame_positions

PROCESSOR = ProcessorConfig(shortest_edge=224)
SAMPLING = SamplingConfig(num_frames=8, frame_sample_rate=4)


def error_of(uri: str | Path, **kwargs) -> VideoError:
    with pytest.raises(VideoError) as caught:
        decode_video(DecodeRequest(str(uri), SAMPLING, PROCESSOR, **kwargs))
    assert caught.value.uri == str(uri)
    assert str(uri) in str(caught.value)
    return caught.value


def test_error_codes_are_the_documented_strings():
    assert [code.value for code in ErrorCode] == [
        "not_found",
        "permission_denied",
        "unreadable",
        "no_video_stream",
        "decode_error",
        "too_large",
        "timeout",
        "decode_crash",
        "storage_error",
        "internal_error",
    ]
    assert str(ErrorCode.TOO_LARGE) == "too_large"


def test_missing_file(tmp_path):
    error = error_of(tmp_path / "nope.mp4")
    assert error.code == ErrorCode.NOT_FOUND and "no such file" in str(error)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    assert error_of(path).code == ErrorCode.UNREADABLE


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 50)
    error = error_of(path)
    assert error.code == ErrorCode.UNREADABLE and "not a readable media file" in str(error)


def test_directory(tmp_path):
    assert error_of(tmp_path).code == ErrorCode.UNREADABLE


def test_audio_only_file(tmp_path):
    path = write_audio_only(tmp_path / "song.mp4")
    error = error_of(path)
    assert error.code == ErrorCode.NO_VIDEO_STREAM and "streams: audio" in str(error)


def test_truncated_header(tmp_path):
    path = write_video(tmp_path / "v.mkv", num_frames=30)
    path.write_bytes(path.read_bytes()[:200])
    assert error_of(path).code == ErrorCode.UNREADABLE


def test_mp4_cut_before_its_index_is_unreadable(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=60)  # index ("moov") written last
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert error_of(path).code == ErrorCode.UNREADABLE


@pytest.mark.parametrize(
    ("name", "container_options"),
    [("v.mkv", None), ("v.webm", None), ("v.mp4", {"movflags": "faststart"})],
)
def test_video_cut_midway_gives_a_clip_from_what_is_left(tmp_path, name, container_options):
    codec = "libvpx-vp9" if name.endswith(".webm") else "libx264"
    path = write_video(
        tmp_path / name, num_frames=150, codec=codec, container_options=container_options
    )
    cut_at_frame(path, 80)  # the centre clip would need frames 59 to 87
    video = decode_video(DecodeRequest(str(path), SAMPLING, PROCESSOR))
    decodable = video.metadata.num_frames
    assert 70 <= decodable <= 80  # the header promised 150
    assert [read_index(f) for f in video.clips[0]] == frame_positions(decodable, SAMPLING)[
        0
    ].tolist()
    assert video.metadata.duration_s == pytest.approx(decodable / 30)


def test_video_cut_to_a_few_frames_is_a_decode_error(tmp_path):
    path = write_video(tmp_path / "v.mkv", num_frames=150)
    cut_at_frame(path, 5)
    error = error_of(path)
    assert error.code == ErrorCode.DECODE_ERROR and "cut short or damaged" in str(error)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("v.mp4", {"gop": 10}), ("v.avi", {"codec": "mjpeg", "pix_fmt": "yuvj420p"})],
)
def test_some_corrupt_packets_still_give_a_clip_and_are_counted(tmp_path, name, kwargs):
    path = write_video(tmp_path / name, num_frames=60, width=160, height=120, **kwargs)
    assert len(garble_packets(path, every=7)) == 8
    video = decode_video(DecodeRequest(str(path), SAMPLING, PROCESSOR))
    assert video.clips.shape == (1, 8, 224, 224, 3)
    assert video.metadata.corrupt_frames >= 3


def test_stream_with_nearly_every_packet_corrupt_is_a_decode_error(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=40, width=160, height=120)
    garble_packets(path, every=1)  # all but the first
    error = error_of(path)
    assert error.code == ErrorCode.DECODE_ERROR and "packets or frames failed" in str(error)


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        (DecodeConfig(max_pixels=64 * 48 - 1), "max_pixels"),
        (DecodeConfig(max_duration_s=0.5), "max_duration_s"),
        (DecodeConfig(max_file_bytes=100), "max_file_bytes"),
    ],
)
def test_caps(tmp_path, limits, words):
    path = write_video(tmp_path / "v.mp4", num_frames=30)
    error = error_of(path, config=limits)
    assert error.code == ErrorCode.TOO_LARGE and words in str(error)


def test_uncapped_limits_accept_the_same_video(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=30)
    none = DecodeConfig(max_pixels=None, max_duration_s=None, max_file_bytes=None, timeout_s=None)
    assert (
        decode_video(DecodeRequest(str(path), SAMPLING, PROCESSOR, config=none)).clips.shape[0] == 1
    )


def test_timeout(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=30)
    error = error_of(path, config=DecodeConfig(timeout_s=1e-9))
    assert error.code == ErrorCode.TIMEOUT and "timeout_s" in str(error)


@pytest.mark.parametrize(
    "credentials",
    [{"key": "k", "secret": "s"}, {"anon": False}],
    ids=["no-server", "no-credentials"],
)
def test_storage_failures_are_storage_errors(monkeypatch, credentials):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    options = {
        **credentials,
        "endpoint_url": "http://127.0.0.1:9",  # nothing listens there
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    error = error_of("s3://bucket/video.mp4", storage_options=options)
    assert error.code == ErrorCode.STORAGE_ERROR and "retry" in str(error)


def test_errors_survive_pickling_between_processes():
    error = VideoError(ErrorCode.TIMEOUT, "s3://b/v.mp4", "took too long")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.uri, str(copy)) == (error.code, error.uri, str(error))


def test_permission_denied():
    """Root reads any file, so as root the check runs in a forked child that becomes `nobody`."""
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o755)  # nobody may enter the folder, but not read the file
        path = write_video(folder / "private.mp4", num_frames=5)
        path.chmod(0o000)
        assert code_as_unprivileged_user(str(path)) == ErrorCode.PERMISSION_DENIED.value
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def code_as_unprivileged_user(uri: str) -> str:
    if os.geteuid() != 0:
        return error_of(uri).code.value
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, decode, report the code, exit without pytest's cleanup
        outcome = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            decode_video(DecodeRequest(uri, SAMPLING, PROCESSOR))
        except VideoError as error:
            outcome = error.code.value
        except BaseException as error:  # reported to the parent, which fails the test
            outcome = repr(error)
        finally:
            os.write(write_end, outcome.encode())
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode()
