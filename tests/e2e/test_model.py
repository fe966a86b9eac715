"""The model, the slow checks: parity at the base size, a hub revision resolved to the commit
that the actors load, and the compiled model labelling as the eager one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.models import assert_parity, load_in_subprocess, make_hub_cache, random_pixels
from vivit_batch.inference import VideoClassifier
from vivit_batch.model import load_pretrained
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.checkpoints import BASE, make_checkpoint


@pytest.mark.slow
def test_base_size_parity(tmp_path):
    """The published architecture: 200 tensors, 88.95 M parameters, one 32x224x224 clip."""
    hf_model = make_checkpoint(tmp_path, **BASE)
    ours = load_pretrained(tmp_path)
    assert len(ours.state_dict()) == 200
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 2) == 88.95
    assert_parity(hf_model, ours, random_pixels(ours.config, batch=1))


@pytest.mark.slow  # two model loads in fresh processes
def test_a_hub_revision_resolves_to_the_commit_that_actors_load(tmp_path):
    """The driver pins `main` to its commit; a push that moves `main` during the run does not
    change what an actor loading that commit gets."""
    make_checkpoint(tmp_path / "v1", seed=1)
    make_checkpoint(tmp_path / "v2", seed=2)
    hf = tmp_path / "hf"
    first = make_hub_cache(hf, "google/vivit-test", tmp_path / "v1", commit="1" * 40)
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1"}
    resolve = (
        "import sys; from vivit_batch.model.loading import resolve_checkpoint\n"
        "print(resolve_checkpoint(sys.argv[1]).commit)"
    )
    resolved = subprocess.run(
        [sys.executable, "-c", resolve, "google/vivit-test"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resolved.stdout.strip() == first, resolved.stderr
    make_hub_cache(hf, "google/vivit-test", tmp_path / "v2", commit="2" * 40)  # a push
    sha = {
        name: hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest()
        for name in ("v1", "v2")
    }
    pinned, moved = (load_in_subprocess("google/vivit-test", env, rev) for rev in (first, None))
    assert json.loads(pinned.stdout)[0] == sha["v1"]
    assert json.loads(moved.stdout)[0] == sha["v2"]


@pytest.mark.slow  # inductor compiles C++ for the CPU (~15 s)
def test_a_compiled_model_labels_as_the_eager_one(tmp_path):
    """`model.compile=inductor`: the same top-k and embeddings as eager, across chunk sizes
    (a batch's last, smaller chunk is a new shape for the compiled model)."""
    make_checkpoint(tmp_path, num_labels=20)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, size=(v, 4, 32, 32, 3), dtype=np.uint8) for v in (2, 3, 2)]

    def classifier(compile: str) -> VideoClassifier:
        model = load_pretrained(tmp_path)
        return VideoClassifier(
            model, ProcessorConfig(), top_k=5, clips_per_forward=4, compile=compile
        )

    eager, compiled = classifier("none"), classifier("inductor")
    compiled.warm_up()
    assert compiled.forward is not compiled.eager
    expected, got = eager.classify(videos), compiled.classify(videos)
    np.testing.assert_array_equal(got.label_ids, expected.label_ids)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)
    np.testing.assert_allclose(got.embeddings, expected.embeddings, atol=1e-4)
