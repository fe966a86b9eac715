"""Decoding on the GPU's NVDEC engines (`decode.device`), what of it runs without a GPU: the plan
of NVDEC decode actors beside the CPU ones and their placement, the device each decode actor
picks, what the GPU path makes of decoded planes (torch on the CPU here: RGB to the byte, clips
within one level) against the CPU path, and the GPU decoding processes' containment (killed
when stuck, retried then reported when they crash, seccomp without Landlock, no address-space
cap). NVDEC itself: tests/e2e/test_gpu.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.helpers.http import LOCAL_HTTP, CrashingServer, StallingServer
from tests.helpers.plans import plan
from vivit_batch.config import DecodeConfig, SamplingConfig, load_config
from vivit_batch.errors import ConfigError
from vivit_batch.job.cluster import DecodePlacement
from vivit_batch.job.resources import GPU_DECODE_SHARE, GPU_DECODER_CPUS
from vivit_batch.output import Throughput
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    VIEWS,
)
from vivit_batch.output.sink import stats_of
from vivit_batch.processor import ProcessorConfig
from vivit_batch.report.text import decoding_text
from vivit_batch.stages import decode as decode_stage
from vivit_batch.stages.decode import DecodeStage, DecodeStageOptions, decoding_device
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, decode_video
from vivit_batch.video.decode import assemble_clips
from vivit_batch.video.isolation import IsolatedDecoder
from vivit_batch.video.nvdec import (
    FULL_RANGE,
    SWSCALE_COEFFICIENTS,
    evenly_timed,
    nvdec_installed,
    pictures_from_planes,
    rgb_as_swscale,
)
from vivit_batch.video.sampling import frame_positions
from vivit_batch.video.sandbox import probe
from vivit_batch.video.transform import quarter_turns
from vivit_batch.video.worker import PROBE_URI, TEST_PROBE

PROCESSOR = ProcessorConfig(shortest_edge=64, crop_height=64, crop_width=64)
SAMPLING = SamplingConfig(num_frames=8, frame_sample_rate=2)
HAS_NVDEC = nvdec_installed()


def test_gpu_plans_add_nvdec_decoders_per_gpu_beside_the_cpu_ones():
    one = plan(cpus=16, gpus=1, nvdec=True)
    assert (one.gpu_decoders, one.gpu_decoder_cpus) == (7, GPU_DECODER_CPUS)
    # the decoders and the inference actor fit on the GPU together, in Ray's 1e-4 steps
    assert one.inference_gpus == pytest.approx(1 - GPU_DECODE_SHARE)
    assert one.inference_gpus + 7 * one.gpu_decoder_gpus <= 1.0
    assert one.gpu_decoder_gpus == pytest.approx(GPU_DECODE_SHARE / 7, abs=1e-4)
    # their CPUs come off the CPU decoders': 16 - 1 (inference) - 7 x 0.25 -> 13 actors
    assert one.decode_actors == 13 and one.max_decode_actors == 13
    reserved = 13 * one.decode_cpus + 7 * one.gpu_decoder_cpus + one.inference_cpus
    assert reserved == pytest.approx(15)  # all but the CPU left to Ray Data
    assert "7 decode actor(s) on NVDEC" in one.describe()
    assert plan("decode.gpu_decoders=4", cpus=16, gpus=2, nvdec=True).gpu_decoders == 8
    small = plan(cpus=2, gpus=1, nvdec=True)  # all the shares shrink to leave Ray Data its CPU
    assert (small.gpu_decoders, small.decode_actors) == (7, 1)
    assert 0 < small.gpu_decoder_cpus < 0.01 and small.inference_cpus < 1
    nvdec_only = plan("decode.device=cuda", cpus=16, gpus=1, nvdec=True)
    assert (nvdec_only.decode_actors, nvdec_only.max_decode_actors) == (0, 0)
    assert nvdec_only.gpu_decoders == 7
    for unchanged in (
        plan(cpus=16, gpus=1),  # no PyNvVideoCodec
        plan("decode.device=cpu", cpus=16, gpus=1, nvdec=True),
        plan("decode.sandbox=required", cpus=16, gpus=1, nvdec=True),  # Landlock: CPU only
        plan("resources.inference_gpus=0", cpus=16, gpus=1, nvdec=True),  # no GPU plan
    ):
        assert unchanged.gpu_decoders == 0 and unchanged.gpu_decoder_gpus == 0
    assert plan(cpus=16, gpus=1).inference_gpus == 1.0


def test_decode_device_cuda_is_refused_before_any_work_where_it_cannot_run():
    with pytest.raises(ConfigError, match="the cluster has no GPU"):
        plan("decode.device=cuda", cpus=16, nvdec=True)
    with pytest.raises(ConfigError, match="PyNvVideoCodec is not installed"):
        plan("decode.device=cuda", cpus=16, gpus=1)
    with pytest.raises(ConfigError, match="decode.sandbox=required needs decode.device"):
        load_config(None, ["decode.device=cuda", "decode.sandbox=required"])
    with pytest.raises(ConfigError, match="decode.device"):
        load_config(None, ["decode.device=gpu"])


def test_the_first_decode_actors_placed_get_a_share_of_a_gpu():
    placement = DecodePlacement(plan(cpus=16, gpus=1, nvdec=True))
    placed = [placement() for _ in range(20)]
    share = {"num_gpus": plan(cpus=16, gpus=1, nvdec=True).gpu_decoder_gpus}
    assert placed[:7] == [{**share, "num_cpus": GPU_DECODER_CPUS}] * 7
    assert placed[7:] == [{}] * 13  # CPU decoders: no CPU-only nodes to steer them to


def test_the_run_report_says_what_each_kind_of_decode_actor_decoded():
    rows = pa.table(
        {
            "video_id": ["a", "b", "c", "d"],
            "status": ["ok", "ok", "ok", "error"],
            "error_code": [None, None, None, "unreadable"],
            VIEWS: pa.array([1, 1, 1, None], pa.int32()),
            DECODE_SECONDS: [0.1, 0.1, 0.4, 0.01],
            DECODED_ON_NVDEC: [True, True, False, None],
            INFERENCE_SECONDS: [0.01] * 4,
            BYTES_READ: pa.array([10, 10, 10, None], pa.int64()),
            INFERENCE_DEVICE: ['{"device": "cuda:0"}'] * 4,
        }
    )
    stats = stats_of(rows)
    assert (stats.nvdec_clips, stats.nvdec_decode_seconds) == (2, pytest.approx(0.2))
    speed = Throughput.of(stats, 1.0, decode_actors=1, inference_actors=1, gpu_decoders=2)
    assert speed.nvdec_decode_clips_per_second == 2 * 2 / 0.2  # two actors at 10 clips/s
    assert speed.cpu_decode_clips_per_second == 2.439  # 1 clip in 0.41 s: error rows count here
    assert decoding_text(speed) == ("NVDEC 2 of 3 clips (20.0 clips/s), the CPU 1 (2.439 clips/s)")
    cpu_only = Throughput.of(stats, 1.0, decode_actors=1, inference_actors=1)
    assert cpu_only.nvdec_decode_clips_per_second is cpu_only.cpu_decode_clips_per_second is None


def test_each_decode_actor_picks_its_device():
    assert decoding_device("cpu") == "cpu"
    assert decoding_device("auto") == "cpu"  # not an actor Ray gave a GPU
    if not HAS_NVDEC:
        with pytest.raises(ConfigError, match="pip install pynvvideocodec"):
            decoding_device("cuda")


NVENC_MISSING = (
    "raise RuntimeError('Failed to load NVENC library: libnvidia-encode.so.1: cannot open shared "
    "object file: No such file or directory\\n\\n=== TROUBLESHOOTING STEPS ===\\n...')"
)
"""What PyNvVideoCodec 2.2.4's import raises where the driver's video libraries are not there
(seen here, in a container without the `video` capability), as a package of that name."""


def pynvvideocodec_that(tmp_path: Path, monkeypatch, code: str) -> None:
    """A PyNvVideoCodec package running `code` at import, found first by this process and by
    the processes it starts."""
    package = tmp_path / "PyNvVideoCodec"
    package.mkdir()
    (package / "__init__.py").write_text(code + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_nvdec_where_pynvvideocodec_cannot_load_is_refused_or_left_saying_why(
    tmp_path, monkeypatch, caplog
):
    """Installed but not loadable (the driver's video libraries missing): `cuda` stops the run
    naming the import's error and the container setting that fixes it; `auto` decodes on the
    CPU and says the same in the log."""
    pynvvideocodec_that(tmp_path, monkeypatch, NVENC_MISSING)
    with pytest.raises(ConfigError) as refused:
        decoding_device("cuda")
    said = str(refused.value)
    assert "cannot be loaded on this node (RuntimeError: Failed to load NVENC library" in said
    assert "TROUBLESHOOTING" not in said  # the first line of what it raised
    assert "NVIDIA_DRIVER_CAPABILITIES must include video" in said
    assert said.endswith("or set decode.device=cpu")
    cuda = DecodeConfig(device="cuda", isolation="none")
    # a decode actor starts (Ray would retry a constructor that raises) and refuses its batch
    stage = DecodeStage(DecodeStageOptions(SAMPLING, PROCESSOR, cuda))
    with pytest.raises(ConfigError, match="NVIDIA_DRIVER_CAPABILITIES"):
        stage.decode_all(pa.table({"video_id": ["v"], "uri": ["v.mp4"]}))
    monkeypatch.setattr(decode_stage, "_given_a_gpu", lambda: True)  # as in an NVDEC actor
    assert decoding_device("auto") == "cpu"
    assert "libnvidia-encode.so.1" in caplog.text
    assert "this decode actor decodes on the CPU" in caplog.text


def test_nvdec_where_pynvvideocodec_loads_is_used(tmp_path, monkeypatch):
    pynvvideocodec_that(tmp_path, monkeypatch, "DECODERS = 7")
    assert decoding_device("cuda") == "cuda"
    monkeypatch.setattr(decode_stage, "_given_a_gpu", lambda: True)
    assert decoding_device("auto") == "cuda"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("videos")
    return {
        "wide": write_video(
            directory / "wide.mp4", num_frames=20, width=320, height=180, content="detailed"
        ),
        "turned": write_video(
            directory / "turned.mp4", num_frames=20, width=120, height=200, rotation=90
        ),
    }


@pytest.mark.parametrize("name", ["wide", "turned"])
def test_the_gpu_paths_clips_are_the_cpu_paths_within_one_level(videos, name):
    """The same decoded planes through the GPU path's steps (run by torch on the CPU here):
    RGB as swscale, turned as the display matrix says, resized in floats, cropped; against the
    CPU path's clips of the same video."""
    expected = cpu_result(videos[name])
    with av.open(str(videos[name])) as container:
        frames = list(container.decode(video=0))
    wanted = sorted(set(frame_positions(len(frames), SAMPLING).flatten().tolist()))
    planes = [
        torch.from_numpy(np.stack([plane_pixels(frames[i].planes[p]) for i in wanted]))
        for p in range(3)
    ]
    first = frames[0]
    colour = (first.colorspace, first.color_range == FULL_RANGE)
    turns = quarter_turns(first.rotation)
    pictures = pictures_from_planes(planes, colour, PROCESSOR, turns)
    by_position = dict(zip(wanted, pictures, strict=True))
    nested = [[by_position[p] for p in row] for row in frame_positions(len(frames), SAMPLING)]
    clips = assemble_clips(nested, PROCESSOR, SAMPLING)
    difference = np.abs(clips.astype(int) - expected.clips.astype(int))
    assert clips.shape == expected.clips.shape and (turns == 1) == (name == "turned")
    assert difference.max() <= 1 and difference.mean() < 0.2


def test_nvdec_is_given_the_videos_whose_frames_its_indices_find(tmp_path):
    """NVDEC's frames are asked for by index, the CPU path's by time: the same frames where the
    index lists evenly spaced frames (B-frames or not), not for a variable frame rate, nor in
    a container that indexes keyframes only."""
    jitter = [i / 30 + (0.01 if i % 3 == 0 else 0) for i in range(40)]
    cases = {
        "cfr.mp4": ({}, True),
        "bframes.mp4": ({"content": "detailed", "width": 320, "height": 180}, True),
        "vfr.mp4": ({"timestamps": jitter}, False),
        "cfr.mkv": ({}, False),
    }
    for name, (settings, expected) in cases.items():
        path = write_video(tmp_path / name, num_frames=40, **settings)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert evenly_timed(stream, 40) is expected, name


COLOUR_VIDEOS = {  # name: write_video's settings beyond a 320x180 detailed picture
    "untagged.mp4": {},
    "bt709.mp4": {"options": {"x264-params": "colormatrix=bt709"}},
    "full-range.mp4": {"pix_fmt": "yuvj420p"},
    "small.mp4": {"width": 98, "height": 54},
}


@pytest.mark.parametrize("name", COLOUR_VIDEOS)
def test_the_gpu_paths_yuv_to_rgb_is_the_cpu_paths_to_the_byte(tmp_path, name):
    """NVDEC's planes made RGB as swscale makes them (what the CPU path and the Hugging Face
    recipe convert with), on the same decoded planes: not one byte apart."""
    settings = {"width": 320, "height": 180, **COLOUR_VIDEOS[name]}
    path = write_video(tmp_path / name, num_frames=4, content="detailed", **settings)
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    planes = [
        torch.from_numpy(np.stack([plane_pixels(frame.planes[i]) for frame in frames]))
        for i in range(3)
    ]
    first = frames[0]
    got = rgb_as_swscale(*planes, first.colorspace, first.color_range == FULL_RANGE).numpy()
    expected = np.stack([frame.to_ndarray(format="rgb24") for frame in frames])
    assert first.colorspace in SWSCALE_COEFFICIENTS
    np.testing.assert_array_equal(got, expected)


def plane_pixels(plane) -> np.ndarray:
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


@pytest.fixture(scope="module")
def gpu_decoder():
    with IsolatedDecoder(DecodeConfig(device="cuda", timeout_s=2)) as decoder:
        yield decoder


def request(uri: str, **config) -> DecodeRequest:
    return DecodeRequest(uri, SAMPLING, PROCESSOR, config=DecodeConfig(device="cuda", **config))


def served(url: str, **config) -> DecodeRequest:
    """`request` for a video the tests' HTTP server sends."""
    return dataclasses.replace(request(url, **config), storage_options=LOCAL_HTTP)


def cpu_result(path: Path):
    return decode_video(DecodeRequest(str(path), SAMPLING, PROCESSOR))


@pytest.mark.skipif(HAS_NVDEC, reason="NVDEC decodes here: tests/e2e/test_gpu.py compares it")
def test_without_nvdec_a_gpu_decoding_process_gives_the_cpu_paths_rows(gpu_decoder, videos):
    for path in videos.values():
        video = gpu_decoder.decode(request(str(path)))
        np.testing.assert_array_equal(video.clips, cpu_result(path).clips)
        assert video.metadata == cpu_result(path).metadata  # decoder: cpu
    with pytest.raises(VideoError) as caught:
        gpu_decoder.decode(request(str(videos["wide"].parent / "missing.mp4")))
    assert caught.value.code == ErrorCode.NOT_FOUND


def test_a_stuck_gpu_decoding_process_is_killed_and_replaced(gpu_decoder, videos):
    gpu_decoder.decode(request(str(videos["wide"])))
    stuck = gpu_decoder.child_pid
    stalling = StallingServer(videos["wide"].read_bytes())
    try:
        with pytest.raises(VideoError) as caught:
            gpu_decoder.decode(served(stalling.url, timeout_s=1, stall_timeout_s=None))
    finally:
        stalling.stop()
    assert caught.value.code == ErrorCode.TIMEOUT and "was killed" in str(caught.value)
    gpu_decoder.decode(request(str(videos["wide"])))
    assert gpu_decoder.child_pid != stuck


def test_a_crashing_gpu_decoding_process_is_retried_then_reported(gpu_decoder, videos):
    poison = CrashingServer()
    try:
        with pytest.raises(VideoError) as caught:
            gpu_decoder.decode(served(poison.url))
    finally:
        poison.stop()
    assert caught.value.code == ErrorCode.DECODE_CRASH and len(poison.killed) == 2
    assert gpu_decoder.decode(request(str(videos["turned"]))).clips.shape[0] == 1


def data_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as limits:
        [line] = [line for line in limits if line.startswith("Max data size")]
    return line.split()[3]


@pytest.mark.skipif(probe().lacks(landlock=False) is not None, reason="no seccomp filters here")
def test_gpu_decoding_processes_get_seccomp_without_landlock_and_no_data_cap(
    tmp_path, monkeypatch, videos
):
    monkeypatch.setenv(TEST_PROBE, "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # as Ray sets it for a GPU share
    spec = {"create": [str(tmp_path / "written")], "connect": ["127.0.0.1", 9]}
    found = {}
    for device in ("cuda", "cpu"):
        with IsolatedDecoder(DecodeConfig(device=device)) as decoder:
            probe_request = DecodeRequest(PROBE_URI + json.dumps(spec), SAMPLING, PROCESSOR)
            with pytest.raises(RuntimeError) as probed:
                decoder.decode(probe_request)
            found[device] = (json.loads(str(probed.value)), decoder.sandbox)
            found[device] += (data_limit(decoder.child_pid),)
    gpu_probe, gpu_sandbox, gpu_data = found["cuda"]
    assert gpu_sandbox.startswith("seccomp") and "no landlock" in gpu_sandbox
    assert gpu_probe["connect"] == "PermissionError"  # socket() refused: seccomp
    assert gpu_probe["create 0"] == "ok"  # no Landlock
    assert gpu_data == "unlimited"  # CUDA maps memory by the gigabyte
    assert "CUDA_VISIBLE_DEVICES" in gpu_probe["environment"]  # the GPU Ray gave the actor
    assert found["cpu"][2] == str(DecodeConfig().max_memory_bytes)
