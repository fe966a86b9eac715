"""Decoding in a killable worker process (`IsolatedDecoder`): the same results as in-process, a
stalled stream becomes a `timeout`, a decoder that dies is retried and then a `decode_crash`, and
the worker's memory is capped. Faults are real: an HTTP server that stalls, and one that sends
SIGSEGV to whichever process asks it for the poison file."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.helpers.http import LOCAL_HTTP, CrashingServer, StallingServer, alive
from vivit_batch.config import DecodeConfig, SamplingConfig, load_config
from vivit_batch.errors import ConfigError
from vivit_batch.output.schema import DECODE_SECONDS
from vivit_batch.processor import ProcessorConfig
from vivit_batch.stages.decode import DecodeStage, DecodeStageOptions
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, decode_video
from vivit_batch.video.isolation import KILL_GRACE_S, IsolatedDecoder
from vivit_batch.video.worker import Decoded, MalformedReply, encode_reply, parse_reply

PROCESSOR = ProcessorConfig(shortest_edge=64, crop_height=64, crop_width=64)
SAMPLING = SamplingConfig(num_frames=8, frame_sample_rate=2)
SLACK_S = 20.0
"""Added to every time bound: this machine is shared and often loaded."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(directory / "a.mp4", num_frames=40, content="detailed"),
        "mkv": write_video(directory / "b.mkv", num_frames=30, width=96, height=54),
        "avi": write_video(
            directory / "c.avi", num_frames=24, codec="mjpeg", pix_fmt="yuvj420p", gop=1
        ),
    }


@pytest.fixture(scope="module")
def decoder():
    with IsolatedDecoder() as decoder:
        yield decoder


def assert_same_video(isolated, in_process) -> None:
    assert isolated.clips.dtype == np.uint8
    np.testing.assert_array_equal(isolated.clips, in_process.clips)
    assert isolated.metadata == in_process.metadata


def test_isolated_decode_equals_in_process(decoder, videos):
    sampling = SamplingConfig(
        num_frames=4, temporal_views="uniform", num_temporal_views=2, spatial_crops="three"
    )
    for path in videos.values():
        for s in (SAMPLING, sampling):
            assert_same_video(
                decoder.decode(DecodeRequest(str(path), s, PROCESSOR, video_id="v")),
                decode_video(DecodeRequest(str(path), s, PROCESSOR, video_id="v")),
            )


def test_video_errors_come_back_unchanged_and_keep_the_worker(decoder, videos, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
    cases = [
        (str(tmp_path / "missing.mp4"), DecodeConfig(), ErrorCode.NOT_FOUND),
        (str(tmp_path / "notes.mp4"), DecodeConfig(), ErrorCode.UNREADABLE),
        (str(videos["mp4"]), DecodeConfig(max_pixels=100), ErrorCode.TOO_LARGE),
        (str(videos["mp4"]), DecodeConfig(timeout_s=1e-9), ErrorCode.TIMEOUT),  # the soft one
    ]
    decoder.decode(DecodeRequest(str(videos["mkv"]), SAMPLING, PROCESSOR))
    worker, restarts = decoder.child_pid, decoder.restarts
    for uri, limits, code in cases:
        with pytest.raises(VideoError) as isolated:
            decoder.decode(DecodeRequest(uri, SAMPLING, PROCESSOR, config=limits))
        with pytest.raises(VideoError) as in_process:
            decode_video(DecodeRequest(uri, SAMPLING, PROCESSOR, config=limits))
        assert isolated.value.code == in_process.value.code == code
        if code != ErrorCode.TIMEOUT:
            assert str(isolated.value) == str(in_process.value)
    assert (decoder.child_pid, decoder.restarts) == (worker, restarts)


def test_a_bug_in_the_worker_is_raised_in_the_caller(decoder, videos):
    no_crop = ProcessorConfig(shortest_edge=64, do_center_crop=False)
    with pytest.raises(ValueError, match="needs a processor with a crop size") as raised:
        decoder.decode(
            DecodeRequest(
                str(videos["mp4"]), SamplingConfig(spatial_crops="three"), no_crop, video_id="v"
            )
        )
    assert "decode_video" in str(raised.value.__cause__)  # the worker's traceback
    assert (
        decoder.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR)).clips.shape[0] == 1
    )


def test_pipes_and_devices_are_unreadable_at_once(decoder, videos, tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")  # nobody writes: a reader would wait for good
    decoder.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
    worker, restarts = decoder.child_pid, decoder.restarts
    for uri, kind in [
        (str(tmp_path / "pipe.mp4"), "a named pipe (FIFO)"),
        ("/dev/zero", "a device"),
    ]:
        request = DecodeRequest(uri, SAMPLING, PROCESSOR, config=DecodeConfig(timeout_s=60))
        started = time.monotonic()
        with pytest.raises(VideoError) as caught:
            decoder.decode(request)
        assert time.monotonic() - started < 1.0
        assert caught.value.code == ErrorCode.UNREADABLE and kind in str(caught.value)
        with pytest.raises(VideoError) as in_process:
            decode_video(request)
        assert str(in_process.value) == str(caught.value)
    assert (decoder.child_pid, decoder.restarts) == (worker, restarts)


@pytest.fixture()
def stalling(videos):
    server = StallingServer(videos["mp4"].read_bytes())
    yield server
    server.stop()


def test_a_stuck_worker_is_killed_at_the_hard_deadline_and_replaced(decoder, videos, stalling):
    """No stall timeout: the read blocks the worker for good, past the soft deadline too."""
    decoder.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
    stuck = decoder.child_pid
    started = time.monotonic()
    with pytest.raises(VideoError) as caught:
        decoder.decode(
            DecodeRequest(
                stalling.url,
                SAMPLING,
                PROCESSOR,
                config=DecodeConfig(timeout_s=1, stall_timeout_s=None),
                storage_options=LOCAL_HTTP,
            )
        )
    elapsed = time.monotonic() - started
    assert caught.value.code == ErrorCode.TIMEOUT and "was killed" in str(caught.value)
    assert 1 + KILL_GRACE_S - 0.1 <= elapsed < 1 + KILL_GRACE_S + SLACK_S
    assert not alive(stuck)
    video = decoder.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
    assert decoder.child_pid != stuck
    assert_same_video(video, decode_video(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR)))


def test_a_stalled_http_source_times_out_after_the_stall_timeout(decoder, videos, stalling):
    decoder.decode(DecodeRequest(str(videos["mkv"]), SAMPLING, PROCESSOR))
    worker = decoder.child_pid
    started = time.monotonic()
    with pytest.raises(VideoError) as caught:
        decoder.decode(
            DecodeRequest(
                stalling.url,
                SAMPLING,
                PROCESSOR,
                config=DecodeConfig(timeout_s=60, stall_timeout_s=1),
                storage_options=LOCAL_HTTP,
            )
        )
    elapsed = time.monotonic() - started
    assert caught.value.code == ErrorCode.TIMEOUT
    assert "decode.stall_timeout_s" in str(caught.value)
    assert 1 <= elapsed < 1 + SLACK_S  # not decode.timeout_s: 60 s
    assert decoder.child_pid == worker  # an error of the video, not a stuck worker
    assert (
        decoder.decode(DecodeRequest(str(videos["mkv"]), SAMPLING, PROCESSOR)).clips.shape[0] == 1
    )


def test_decoder_crash_is_retried_then_reported(decoder, videos):
    poison = CrashingServer()
    restarts = decoder.restarts
    try:
        with pytest.raises(VideoError) as caught:
            decoder.decode(
                DecodeRequest(poison.url, SAMPLING, PROCESSOR, storage_options=LOCAL_HTTP)
            )
    finally:
        poison.stop()
    assert caught.value.code == ErrorCode.DECODE_CRASH  # crash_retries=1: two attempts
    assert "died on each of 2 attempts" in str(caught.value)
    assert str(caught.value).count("killed by SIGSEGV") == 2
    assert len(poison.killed) == 2 and decoder.restarts == restarts + 2
    video = decoder.decode(DecodeRequest(str(videos["avi"]), SAMPLING, PROCESSOR))
    assert_same_video(video, decode_video(DecodeRequest(str(videos["avi"]), SAMPLING, PROCESSOR)))


def test_the_retry_after_a_crash_gives_the_result(decoder):
    """Killed once, the second attempt reads the file to its end: its result is the answer."""
    poison = CrashingServer(kills=1, data=b"no video here")
    try:
        with pytest.raises(VideoError) as caught:
            decoder.decode(
                DecodeRequest(poison.url, SAMPLING, PROCESSOR, storage_options=LOCAL_HTTP)
            )
        assert caught.value.code == ErrorCode.UNREADABLE
        assert len(poison.killed) == 1
    finally:
        poison.stop()


def test_a_worker_that_died_while_idle_is_replaced_without_blame(decoder, videos):
    decoder.decode(DecodeRequest(str(videos["mkv"]), SAMPLING, PROCESSOR))
    os.kill(decoder.child_pid, signal.SIGKILL)
    time.sleep(0.2)
    decoder.crash_retries, retries = 0, decoder.crash_retries
    try:
        assert (
            decoder.decode(DecodeRequest(str(videos["mkv"]), SAMPLING, PROCESSOR)).clips.shape[0]
            == 1
        )
    finally:
        decoder.crash_retries = retries


def test_memory_cap_makes_a_big_video_too_large_and_the_next_one_fine(decoder, videos, tmp_path):
    big = write_video(
        tmp_path / "4k.mp4", num_frames=2, width=3840, height=2160, options={"preset": "ultrafast"}
    )
    decoder.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
    with open(f"/proc/{decoder.child_pid}/status") as status:
        imports = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData"))
    # A 4K picture alone is 25 MB in RGB: 48 MiB over what the imports hold is too little.
    with IsolatedDecoder(DecodeConfig(max_memory_bytes=imports + 48 * 2**20)) as capped:
        with pytest.raises(VideoError) as caught:
            capped.decode(
                DecodeRequest(str(big), SAMPLING, PROCESSOR, config=DecodeConfig(threads=2))
            )
        assert caught.value.code == ErrorCode.TOO_LARGE and "max_memory_bytes" in str(caught.value)
        video = capped.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
        assert_same_video(
            video, decode_video(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
        )
        assert capped.restarts >= 1  # workers left above half the cap are replaced


def test_processes_end_with_their_parent(tmp_path, videos):
    script = (
        "import os, sys\n"
        "from vivit_batch.video.isolation import IsolatedDecoder\n"
        "from vivit_batch.processor import ProcessorConfig\n"
        "from vivit_batch.config import SamplingConfig\n"
        "from vivit_batch.video import DecodeRequest\n"
        "d = IsolatedDecoder()\n"
        "sampling, processor = SamplingConfig(num_frames=2), ProcessorConfig(shortest_edge=32)\n"
        "d.decode(DecodeRequest(sys.argv[1], sampling, processor))\n"
        "print(d.child_pid, d._processes.zygote.process.pid, flush=True)\n"
        "os._exit(0)\n"  # no clean-up: as if the actor were killed
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(videos["mp4"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2, result.stderr[-2000:]
    end = time.monotonic() + 10
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_a_zygote_whose_parent_left_before_it_was_ready_exits_quietly():
    """A run stopped as it starts (its time limit, Ctrl-C) is gone before its decoding process
    is ready: that process exits, without a traceback on the run's stderr."""
    ours, theirs = socket.socketpair()
    command = (
        "from vivit_batch.video.worker import zygote_main; "
        f"zygote_main({theirs.fileno()}, {os.getpid()}, 0, 'off')"
    )
    zygote = subprocess.Popen(
        [sys.executable, "-c", command],
        pass_fds=(theirs.fileno(),),
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    ours.close()  # before the zygote has imported torch and sent its ready message
    _, stderr = zygote.communicate(timeout=120)
    assert (zygote.returncode, stderr) == (0, "")


def test_decode_stage_gives_the_same_rows_with_and_without_isolation(decoder, videos, tmp_path):
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    uris = [str(videos["mp4"]), str(tmp_path / "random.mp4"), str(videos["avi"]), "/nope.mkv"]
    batch = pa.table({"video_id": [f"v{i}" for i in range(len(uris))], "uri": uris})
    isolated = DecodeStage(DecodeStageOptions(SAMPLING, PROCESSOR, DecodeConfig()))
    in_actor = DecodeStage(DecodeStageOptions(SAMPLING, PROCESSOR, DecodeConfig(isolation="none")))
    assert isinstance(isolated.decoder, IsolatedDecoder) and in_actor.decoder is None
    isolated.decoder.close()  # the module's decoder saves this test starting another
    isolated.decoder = decoder
    a = isolated.decode_all(batch).drop_columns([DECODE_SECONDS])
    b = in_actor.decode_all(batch).drop_columns([DECODE_SECONDS])
    assert a.equals(b)
    assert a.column("error_code").to_pylist() == [None, "unreadable", None, "not_found"]


def test_decode_config_keys():
    config = load_config(
        None,
        [
            "decode.isolation=none",
            "decode.crash_retries=3",
            "decode.max_memory_bytes=null",
            "decode.max_frames_per_clip=500",
            "manifest.allow_http=true",
            "manifest.http_allow_hosts=127.0.0.1",
        ],
    )
    assert config.decode.isolation == "none" and config.decode.crash_retries == 3
    assert config.decode.max_memory_bytes is None and config.decode.max_frames_per_clip == 500
    assert config.manifest.allow_http is True
    defaults = load_config(None, [])
    assert (defaults.decode.isolation, defaults.decode.crash_retries) == ("process", 1)
    assert defaults.manifest.allow_http is False
    with pytest.raises(ConfigError) as error:
        load_config(None, ["decode.isolation=thread", "decode.max_memory_bytes=0"])
    assert "decode.isolation must be one of process, none, got 'thread'" in str(error.value)
    assert "decode.max_memory_bytes must be at least 1, got 0" in str(error.value)


def test_frames_per_clip_cap(videos):
    sparse = SamplingConfig(num_frames=4, frame_sample_rate=1)
    # a 4-frame clip needs at least 4 decoded frames; reaching the centre of a video with one
    # keyframe takes about 20
    with pytest.raises(VideoError) as caught:
        decode_video(
            DecodeRequest(
                str(videos["mp4"]), sparse, PROCESSOR, config=DecodeConfig(max_frames_per_clip=2)
            )
        )
    assert caught.value.code == ErrorCode.TOO_LARGE and "max_frames_per_clip" in str(caught.value)
    video = decode_video(
        DecodeRequest(
            str(videos["mp4"]), sparse, PROCESSOR, config=DecodeConfig(max_frames_per_clip=40)
        )
    )
    assert video.clips.shape[:2] == (1, 4)


def test_the_decoding_processes_get_no_secrets_of_the_actor(videos, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "for-s3-sources")
    with IsolatedDecoder() as decoder:
        decoder.decode(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
        raw = Path(f"/proc/{decoder.child_pid}/environ").read_bytes()
    environment = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert "HF_TOKEN" not in environment and "DATABASE_PASSWORD" not in environment
    assert "AWS_SECRET_ACCESS_KEY" not in environment  # its actor reads S3 for it
    assert not {"HOME", "PATH"} & set(environment)


class RunsWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_reply_is_read_as_data_and_a_pickle_is_refused_unrun(videos, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(MalformedReply):
        parse_reply(pickle.dumps(RunsWhenUnpickled(marker)), "v.mp4", 2**30)
    assert not marker.exists()

    decoded = decode_video(DecodeRequest(str(videos["mp4"]), SAMPLING, PROCESSOR))
    reply = Decoded(decoded.metadata, decoded.clips.shape, 123)
    assert parse_reply(encode_reply(reply), "v.mp4", 2**30) == reply
    header = json.loads(encode_reply(reply))
    for field, value in [
        ("shape", [1, 8, 2**20, 2**20, 3]),  # more bytes than the cap
        ("shape", [1, 8, 64, 64]),
        ("rss_bytes", -1),
        ("metadata", {**header["metadata"], "fps": "fast"}),
        ("metadata", {**header["metadata"], "extra": 1}),
        ("kind", "pickle"),
    ]:
        with pytest.raises(MalformedReply):
            parse_reply(json.dumps({**header, field: value}).encode(), "v.mp4", 2**30)
    error = {"kind": "video_error", "code": "rm -rf", "detail": "x", "rss_bytes": 0}
    with pytest.raises(MalformedReply):
        parse_reply(json.dumps(error).encode(), "v.mp4", 2**30)
