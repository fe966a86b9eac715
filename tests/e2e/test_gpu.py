"""The CUDA path, on a machine with a GPU (`pytest -m gpu`; benchmarks/gpu_check.sh runs them):
inference on CUDA in fp32, bf16 and fp16 against the CPU's fp32, and the device an inference
actor opens and reports. Without CUDA they are skipped, saying why (tests/conftest.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vivit_batch.device import describe, open_device
from vivit_batch.inference import VideoClassifier
from vivit_batch.model import load_pretrained
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.checkpoints import make_checkpoint

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
