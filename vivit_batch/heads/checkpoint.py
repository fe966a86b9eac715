"""A head as a checkpoint in Hugging Face layout, and reading one back for `relabel`.

    DIR/config.json                the base's, with the new classes (id2label, label2id)
    DIR/model.safetensors          the base's backbone tensors + classifier.weight / .bias
    DIR/preprocessor_config.json   the base's, byte for byte
    DIR/training.json              how the head was trained (`train.training_record`)

`run --model DIR` and transformers' `VivitForVideoClassification.from_pretrained(DIR)` load it
like any ViViT checkpoint. `relabel` reads only the classifier and training.json (no torch).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vivit_batch.errors import ConfigError
from vivit_batch.fingerprint import fingerprint

if TYPE_CHECKING:
    from vivit_batch.heads.fit import LinearHead
    from vivit_batch.model import VivitForVideoClassification

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_FILE = "training.json"
CLASSIFIER = ("classifier.weight", "classifier.bias")


def save_head(
    directory: Path, backbone: VivitForVideoClassification, head: LinearHead, training: dict
) -> None:
    """Write the head checkpoint: the same inputs give the same bytes (no time in any file)."""
    import torch
    from safetensors.torch import save_file

    base = backbone.checkpoint.directory
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((base / CONFIG_FILE).read_text())
    config.update(labels_config(head.classes, config))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v for k, v in backbone.state_dict().items() if k not in CLASSIFIER}
    state[CLASSIFIER[0]] = torch.from_numpy(head.weight)
    state[CLASSIFIER[1]] = torch.from_numpy(head.bias)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, directory / WEIGHTS_FILE, {"format": "pt"}
    )
    (directory / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600
    if backbone.checkpoint.processor_file and base.resolve() != directory.resolve():
        shutil.copyfile(
            base / backbone.checkpoint.processor_file,
            directory / backbone.checkpoint.processor_file,
        )
    (directory / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")


def labels_config(classes: list[str], config: dict) -> dict:
    """The config.json keys that name the classes; `num_labels` only where the base has it."""
    labels = {
        "id2label": {str(i): name for i, name in enumerate(classes)},
        "label2id": {name: i for i, name in enumerate(classes)},
    }
    if "num_labels" in config:
        labels["num_labels"] = len(classes)
    return labels


@dataclass(frozen=True)
class HeadCheckpoint:
    """What `relabel` needs of a head checkpoint."""

    directory: Path
    weight: np.ndarray
    """(classes, hidden) float32"""
    bias: np.ndarray
    labels: list[str]
    """class names in id order"""
    weights_sha256: str
    """of DIR's model.safetensors, as `run --model DIR` records it"""
    reads: frozenset[str]
    """sha256 of the weights whose embeddings the head reads: its own, its base's, and those
    its base listed (a head trained on a head)"""


def read_head(directory: str | Path) -> HeadCheckpoint:
    """`ConfigError` unless `directory` is a head that `train-head` wrote."""
    from safetensors import safe_open

    directory = Path(directory)
    training = read_training(directory)
    if training is None:
        raise ConfigError(
            f"--model {directory}: relabel takes a head made by `vivit-batch train-head` "
            f"(a directory with {WEIGHTS_FILE} and its {TRAINING_FILE}, which names the "
            "backbone its embeddings come from); train one with `vivit-batch train-head OUTPUT "
            f"--truth-column COLUMN --save {directory}`"
        )
    config = json.loads((directory / CONFIG_FILE).read_text())
    weights = directory / WEIGHTS_FILE
    with safe_open(weights, framework="numpy") as tensors:
        weight, bias = (tensors.get_tensor(name).astype(np.float32) for name in CLASSIFIER)
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    sha256 = fingerprint((weights,))
    return HeadCheckpoint(
        directory=directory,
        weight=weight,
        bias=bias,
        labels=labels,
        weights_sha256=sha256,
        reads=frozenset(training["base"]["embeddings_from"]) | {sha256},
    )


def read_training(directory: Path) -> dict | None:
    """The head's training.json when `train-head` wrote it (it names the base), else None."""
    path = directory / TRAINING_FILE
    if not (path.is_file() and (directory / WEIGHTS_FILE).is_file()):
        return None
    try:
        training = json.loads(path.read_text())
    except ValueError:
        return None
    base = training.get("base") if isinstance(training, dict) else None
    if not isinstance(base, dict) or not isinstance(base.get("embeddings_from"), list):
        return None
    return training
