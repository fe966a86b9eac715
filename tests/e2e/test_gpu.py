"""The CUDA path, on a machine with a GPU (`pytest -m gpu`; benchmarks/gpu_check.sh runs them):
inference on CUDA in fp32, bf16 and fp16 against the CPU's fp32, the device an inference actor
opens and reports, and NVDEC decoding (with PyNvVideoCodec) against the CPU path's clips, error
codes and job rows. Without CUDA they are skipped, saying why (tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from tests.helpers.jobs import run, write_csv
from vivit_batch.config import NVDEC_REQUIREMENT, DecodeConfig, SamplingConfig
from vivit_batch.device import describe, open_device
from vivit_batch.inference import VideoClassifier
from vivit_batch.model import load_pretrained
from vivit_batch.output import Output
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, VideoError, decode_video
from vivit_batch.video.isolation import IsolatedDecoder
from vivit_batch.video.nvdec import decode_on_device, nvdec_clips, nvdec_installed

pytestmark = pytest.mark.gpu

TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 5e-3}
"""Largest difference in a probability or an embedding value from the CPU's fp32."""


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_inference_agrees_with_the_cpu(tmp_path, precision):
    make_checkpoint(tmp_path, num_labels=50)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, size=(v, 4, 32, 32, 3), dtype=np.uint8) for v in (1, 3, 2)]
    cpu = VideoClassifier(load_pretrained(tmp_path), ProcessorConfig(), top_k=50)
    cuda = VideoClassifier(
        load_pretrained(tmp_path, device="cuda"),
        ProcessorConfig(),
        top_k=50,
        precision=precision,
        clips_per_forward=2,
    )
    assert (cuda.device.type, cuda.precision) == ("cuda", precision)  # no fp32 fallback
    for on_cpu, on_cuda in zip(cpu.classify(videos), cuda.classify(videos), strict=True):
        expected = dict(zip(on_cpu.label_ids, on_cpu.scores, strict=True))
        got = dict(zip(on_cuda.label_ids, on_cuda.scores, strict=True))
        assert max(abs(expected[i] - got[i]) for i in expected) <= TOLERANCE[precision]
        np.testing.assert_allclose(
            on_cuda.embedding, on_cpu.embedding, atol=TOLERANCE[precision] * 10
        )
        if precision == "fp32":
            assert on_cuda.label_ids == on_cpu.label_ids


def test_a_gpu_plan_opens_cuda_and_reports_the_gpu():
    device = open_device("cuda", threads=None)
    record = describe(device, "bf16")
    assert (record["device"], record["precision"], record["cuda"]) == (
        "cuda:0",
        "bf16",
        torch.version.cuda,
    )
    assert record["name"] == torch.cuda.get_device_name(0) and record["memory_gib"] > 0
    assert "warning" not in record


def test_clips_reach_the_gpu_through_pinned_staging_also_from_two_threads_at_once(tmp_path):
    make_checkpoint(tmp_path, num_labels=50)
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, size=(v, 4, 32, 32, 3), dtype=np.uint8) for v in (3, 1, 2, 3)]
    classifier = VideoClassifier(
        load_pretrained(tmp_path, device="cuda"), ProcessorConfig(), top_k=5, clips_per_forward=2
    )
    alone = classifier.classify(videos)
    assert all(slot and slot.host.is_pinned() for slot in classifier.staging.slots)
    results = {}

    def label(key: int) -> None:
        results[key] = [classifier.classify(videos) for _ in range(5)]

    threads = [threading.Thread(target=label, args=(key,)) for key in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for predictions in (p for runs in results.values() for p in runs):
        np.testing.assert_array_equal(predictions.label_ids, alone.label_ids)
        np.testing.assert_allclose(predictions.embeddings, alone.embeddings, atol=1e-5)


needs_nvdec = pytest.mark.skipif(
    not nvdec_installed(),
    reason=f"needs PyNvVideoCodec (pip install {NVDEC_REQUIREMENT})",
)
NVDEC_SAMPLING = SamplingConfig(num_frames=8, frame_sample_rate=4)
NVDEC_TAKES = {  # name: codec, (width, height), rotation
    "720p.mp4": ("libx264", (1280, 720), 0),
    "hevc.mp4": ("libx265", (640, 360), 0),
    "turned.mp4": ("libx264", (360, 640), 90),
}
CPU_TAKES = {"mpeg4.avi": ("mpeg4", (320, 240), 0), "h264.mkv": ("libx264", (320, 240), 0)}


@pytest.fixture(scope="module")
def nvdec_videos(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("nvdec")
    made = {}
    for name, (codec, (width, height), rotation) in {**NVDEC_TAKES, **CPU_TAKES}.items():
        made[name] = write_video(
            directory / name,
            codec=codec,
            width=width,
            height=height,
            rotation=rotation,
            num_frames=48,
            content="detailed",
        )
    (directory / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    made["garbage.mp4"] = directory / "garbage.mp4"
    made["cut.mp4"] = directory / "cut.mp4"
    made["cut.mp4"].write_bytes(made["720p.mp4"].read_bytes()[:30_000])
    return made


def decode_request(path: Path, device: str) -> DecodeRequest:
    return DecodeRequest(
        str(path), NVDEC_SAMPLING, ProcessorConfig(), config=DecodeConfig(device=device)
    )


@needs_nvdec
def test_nvdec_clips_are_the_cpu_paths_within_the_parity_tolerance(tmp_path, nvdec_videos):
    """Pixels within the parity tolerance (1.0 on average), the same metadata, embeddings of a
    224 px model within 1% (relative); MPEG-4 part 2, and Matroska (its index lists keyframes
    only), are left to the CPU path: identical."""
    make_checkpoint(tmp_path, image_size=224, num_frames=8, tubelet_size=[2, 16, 16])
    classifier = VideoClassifier(load_pretrained(tmp_path, device="cuda"), ProcessorConfig())
    for name in NVDEC_TAKES:
        on_gpu = nvdec_clips(decode_request(nvdec_videos[name], "cuda"))
        on_cpu = decode_video(decode_request(nvdec_videos[name], "cpu"))
        assert on_gpu is not None, f"NVDEC did not take {name}"
        assert on_gpu.clips.shape == on_cpu.clips.shape
        assert on_gpu.metadata.decoder == "nvdec"
        assert dataclasses.replace(on_gpu.metadata, decoder="cpu") == on_cpu.metadata
        difference = np.abs(on_gpu.clips.astype(int) - on_cpu.clips.astype(int))
        assert difference.mean() <= 1.0, name
        [gpu_row, cpu_row] = classifier.classify([on_gpu.clips, on_cpu.clips])
        distance = np.linalg.norm(np.subtract(gpu_row.embedding, cpu_row.embedding))
        assert distance <= 0.01 * np.linalg.norm(cpu_row.embedding), name
    for name in CPU_TAKES:
        assert nvdec_clips(decode_request(nvdec_videos[name], "cuda")) is None
        on_gpu_actor = decode_on_device(decode_request(nvdec_videos[name], "cuda"))
        on_cpu = decode_video(decode_request(nvdec_videos[name], "cpu"))
        np.testing.assert_array_equal(on_gpu_actor.clips, on_cpu.clips)


@needs_nvdec
def test_a_gpu_decoding_process_gives_the_cpu_paths_error_codes(nvdec_videos):
    outcomes = {}
    for device in ("cuda", "cpu"):
        with IsolatedDecoder(DecodeConfig(device=device)) as decoder:
            for name in ("garbage.mp4", "cut.mp4", "missing.mp4", "720p.mp4"):
                path = nvdec_videos["720p.mp4"].parent / name
                try:
                    decoder.decode(decode_request(path, device))
                    outcomes[device, name] = "ok"
                except VideoError as error:
                    outcomes[device, name] = error.code
            if device == "cuda":  # a CUDA process is not replaced for its size after a video
                assert decoder.restarts == 0
    for name in ("garbage.mp4", "cut.mp4", "missing.mp4", "720p.mp4"):
        assert outcomes["cuda", name] == outcomes["cpu", name], name
    assert outcomes["cuda", "720p.mp4"] == "ok"


@needs_nvdec
@pytest.mark.slow
def test_the_job_decodes_on_nvdec_with_the_cpu_paths_rows(ray_cluster, tmp_path, nvdec_videos):
    """`decode.device=cuda` (NVDEC decode actors only) and `auto` (beside a CPU one) give the
    rows `cpu` gives: the same statuses and error codes, embeddings within 1%."""
    make_checkpoint(tmp_path / "model")
    names = [*NVDEC_TAKES, *CPU_TAKES, "garbage.mp4"]
    manifest = write_csv(tmp_path / "m.csv", [{"uri": str(nvdec_videos[n])} for n in names])
    rows, on_nvdec = {}, {}
    for device in ("cpu", "cuda", "auto"):
        output = tmp_path / device
        code = run(manifest, output, tmp_path / "model", "--set", f"decode.device={device}")
        assert code == 0, device
        rows[device] = ds.dataset(output).to_table().to_pandas().set_index("uri").sort_index()
        [report] = Output(str(output)).read_reports()
        on_nvdec[device] = report.throughput.nvdec_clips
    assert on_nvdec["cpu"] == 0 and on_nvdec["cuda"] == len(NVDEC_TAKES)
    assert on_nvdec["auto"] > 0  # the NVDEC decoders took their share
    for device in ("cuda", "auto"):
        got, expected = rows[device], rows["cpu"]
        assert list(got.status) == list(expected.status)
        assert list(got.error_code.fillna("")) == list(expected.error_code.fillna(""))
        for uri in expected.index[expected.status == "ok"]:
            difference = np.subtract(got.embedding[uri], expected.embedding[uri])
            assert np.linalg.norm(difference) <= 0.01 * np.linalg.norm(expected.embedding[uri])
