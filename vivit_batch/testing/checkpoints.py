"""Small random ViViT checkpoints in Hugging Face layout, written by `transformers` itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vivit_batch.processor import ProcessorConfig

TINY: dict[str, Any] = dict(
    image_size=32,
    num_frames=4,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    num_labels=5,
)
BASE: dict[str, Any] = dict(
    image_size=224,
    num_frames=32,
    tubelet_size=[2, 16, 16],
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu_fast",
    layer_norm_eps=1e-6,
    num_labels=400,
)
"""The architecture of google/vivit-b-16x2-kinetics400, as its config.json gives it."""


def make_checkpoint(
    directory: Path,
    *,
    weights: str = "safetensors",
    seed: int = 0,
    processor: ProcessorConfig | None = None,
    max_shard_size: str | None = None,
    **config,
):
    """Save a random `transformers.VivitForVideoClassification`; returns the transformers model."""
    from transformers import VivitConfig, VivitForVideoClassification

    settings = {**TINY, **config}
    labels = settings.pop("num_labels")
    hf_config = VivitConfig(
        **settings,
        id2label={i: f"class_{i}" for i in range(labels)},
        label2id={f"class_{i}": i for i in range(labels)},
    )
    torch.manual_seed(seed)
    model = VivitForVideoClassification(hf_config).eval()
    _randomise_non_default(model)
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **extra)
    if weights == "bin":  # transformers 5 writes safetensors only; the hub's ViViT ships a .bin
        _convert_to_bin(Path(directory))
    processor = processor or ProcessorConfig(
        shortest_edge=settings["image_size"],
        crop_height=settings["image_size"],
        crop_width=settings["image_size"],
    )
    (Path(directory) / "preprocessor_config.json").write_text(json.dumps(processor.to_dict()))
    return model


def _convert_to_bin(directory: Path) -> None:
    from safetensors.torch import load_file

    safetensors = directory / "model.safetensors"
    torch.save(load_file(safetensors), directory / "pytorch_model.bin")
    safetensors.unlink()


def _randomise_non_default(model: torch.nn.Module) -> None:
    """Give LayerNorms, biases and CLS token non-trivial values, so parity tests check them."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name or name.endswith("bias") or "cls_token" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
