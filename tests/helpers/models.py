"""Model parity helpers: our ViViT against Hugging Face's on the same pixels."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from vivit_batch.model import VivitConfig


def reference_outputs(hf_model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = hf_model(pixel_values=pixels).logits
        embedding = hf_model.vivit(pixel_values=pixels).last_hidden_state[:, 0]
    return logits, embedding


def assert_parity(hf_model, ours, pixels: torch.Tensor) -> None:
    ref_logits, ref_embedding = reference_outputs(hf_model, pixels)
    with torch.no_grad():
        output = ours(pixels)
    torch.testing.assert_close(output.logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(output.embedding, ref_embedding, atol=1e-4, rtol=0)
    assert torch.equal(output.logits.argmax(-1), ref_logits.argmax(-1))


def random_pixels(config: VivitConfig, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    size = (batch, config.num_frames, 3, config.image_size, config.image_size)
    return torch.randn(size, generator=generator)


def make_hub_cache(hf_home: Path, repo_id: str, checkpoint: Path, commit: str = "") -> str:
    """Lay out `checkpoint` as huggingface_hub's cache holds a downloaded repo, as the commit
    `main` points to."""
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def load_in_subprocess(source: str, env: dict, revision: str | None = None):
    code = (
        "import sys, json; from vivit_batch.model import load_pretrained\n"
        "m = load_pretrained(sys.argv[1], revision=sys.argv[2] or None)\n"
        "print(json.dumps([m.checkpoint.weights_sha256, m.config.num_labels,"
        " m.checkpoint.processor_file]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, source, revision or ""],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
