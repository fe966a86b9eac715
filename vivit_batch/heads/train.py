"""`vivit-batch train-head OUTPUT --truth-column COL --save DIR`: a linear head on the output's
stored embeddings, saved with the backbone that computed them as a checkpoint of the new classes.

    read the examples -> check the classes -> load the backbone (refused unless it computed the
    embeddings) -> fit and evaluate (`fit`) -> save DIR (`checkpoint`) with training.json
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

from vivit_batch.errors import CheckpointError, ConfigError
from vivit_batch.heads.checkpoint import TRAINING_FILE, read_training, save_head
from vivit_batch.heads.examples import Examples, read_examples
from vivit_batch.heads.fit import (
    C_GRID,
    HELD_OUT_FRACTION,
    SEED,
    LinearHead,
    check_classes,
    fit_head,
)
from vivit_batch.model import VivitForVideoClassification, load_pretrained
from vivit_batch.output import Output


def train_head(
    output_uri: str,
    truth_column: str,
    save: str | Path,
    model_source: str | None = None,
    storage_options: dict | None = None,
    labels: list[str] | None = None,
) -> dict:
    """Train, evaluate and save the head; returns what DIR/training.json holds. The truth values
    are those of column `truth_column` in the output and, by video_id, in the `labels` files
    (`truth.Truth`). `ConfigError` or `CheckpointError` (exit code 2) before any fitting when the
    inputs cannot make one."""
    output = Output.existing(output_uri, storage_options)
    examples = read_examples(output, truth_column, labels)
    classes = check_classes(examples, truth_column)
    backbone, reads = backbone_of(output, examples, model_source)
    save = Path(save)
    if save.resolve() == backbone.checkpoint.directory.resolve() and not read_training(save):
        raise ConfigError(
            f"--save {save} is the directory of model {backbone.checkpoint.source}, which "
            "train-head did not make: save the head elsewhere (it would replace the model's "
            "classifier)"
        )
    head = fit_head(examples, classes)
    training = training_record(output, examples, head, backbone, reads)
    save_head(save, backbone, head, training)
    return training


def backbone_of(
    output: Output, examples: Examples, model_source: str | None
) -> tuple[VivitForVideoClassification, list[str]]:
    """The backbone (`--model`, else the output's recorded model at the commit its runs used)
    and the sha256 of every checkpoint whose embeddings it computes; `ConfigError` unless the
    examples' embeddings are among them."""
    source = model_source or (output.read_identity() or {})["model_source"]
    try:
        backbone = load_pretrained(
            source, None if model_source else recorded_commit(output, source)
        )
    except CheckpointError as error:
        if model_source:
            raise
        raise CheckpointError(
            f"the output's model {source} cannot be loaded here ({error}); pass --model with "
            "the checkpoint the output was labelled with"
        ) from error
    reads = embeddings_computed_by(backbone)
    foreign = [sha for sha in examples.weights_sha256 if sha not in reads]
    if foreign:
        raise ConfigError(
            f"the labelled rows' embeddings were computed by weights with sha256 "
            f"{', '.join(sha[:12] for sha in foreign)}, but model {source} has "
            f"{backbone.checkpoint.weights_sha256[:12]}: a head must be trained with the backbone "
            "that computed the embeddings. Pass --model with the checkpoint the output was "
            "labelled with"
        )
    return backbone, reads


def recorded_commit(output: Output, source: str) -> str | None:
    """The hub commit of `source` that the output's last run with it loaded (None for local
    checkpoints)."""
    reports = output.read_reports()
    commits = [r.model.commit for r in reports if r.model.source == source and r.model.commit]
    return commits[-1] if commits else None


def embeddings_computed_by(backbone: VivitForVideoClassification) -> list[str]:
    """The checkpoint's own sha256, and, when it is itself a head, those its training.json
    lists: they share the backbone tensors, so their embeddings are the same."""
    training = read_training(backbone.checkpoint.directory)
    inherited = training["base"]["embeddings_from"] if training else []
    return sorted({backbone.checkpoint.weights_sha256, *inherited})


def training_record(
    output: Output,
    examples: Examples,
    head: LinearHead,
    backbone: VivitForVideoClassification,
    reads: list[str],
) -> dict:
    """DIR/training.json: how the head was trained. No time or host in it: the same output and
    options give the same file."""
    evaluation = dataclasses.asdict(head.evaluation)
    truth = examples.truth_from
    return {
        "output": output.uri,
        "truth_column": truth.column,
        "truth_from": truth.describe(),
        "labels_files": list(truth.files),
        "rows": examples.rows,
        "videos": len(set(examples.videos.tolist())),
        "classes": head.classes,
        "classifier": "multinomial logistic regression (scikit-learn LogisticRegression, lbfgs) "
        "on standardised embeddings, the scaling folded into classifier.weight and .bias",
        "class_weight": "balanced: inversely proportional to each class's share of the rows",
        "regularisation": {
            "C": head.C,
            "chosen_by": f"lowest mean log loss over a stratified {head.cv_folds}-fold by video "
            f"on all labelled rows, shuffled with seed {SEED}",
            "grid": list(C_GRID),
            "cv_log_loss": head.cv_log_loss,
        },
        "evaluation": {
            "method": f"stratified hold-out by video: {HELD_OUT_FRACTION:.0%} of each class's "
            f"videos (at least one), drawn with seed {SEED}; C chosen by cross-validation on "
            "the rest, as for the final fit",
            **evaluation,
        },
        "base": {
            "source": backbone.checkpoint.source,
            "commit": backbone.checkpoint.commit,
            "weights_sha256": backbone.checkpoint.weights_sha256,
            "embeddings_from": reads,
        },
        "warnings": head.warnings,
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    import numpy
    import safetensors
    import sklearn
    import torch

    from vivit_batch import __version__

    return {
        "vivit_batch": __version__,
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }


def training_summary(training: dict, save: str | Path) -> str:
    """What `train-head` prints: the data, the held-out metrics per class, where DIR is."""
    held = training["evaluation"]
    k = held["k"]
    lines = [
        f"{training['rows']} labelled rows ({training['videos']} videos) of "
        f"{len(training['classes'])} classes in {training['truth_from']}",
        f"held out {held['rows']} rows ({held['videos']} videos): top-1 {held['top1']:.1%}, "
        f"top-{k} {held['topk']:.1%} (C={held['C']:g}, fitted on the other "
        f"{held['train_videos']} videos)",
        f"  {'class':<24} {'precision':>9} {'recall':>7} {'support':>8}",
    ]
    for name, metrics in held["per_class"].items():
        lines.append(
            f"  {name[:24]:<24} {metrics['precision']:>9.2f} {metrics['recall']:>7.2f} "
            f"{metrics['support']:>8}"
        )
    lines += [f"warning: {warning}" for warning in training["warnings"]]
    lines.append(
        f"final head: C={training['regularisation']['C']:g} on all {training['rows']} rows; "
        f"saved to {save} ({TRAINING_FILE}: the confusion matrix and the rest)"
    )
    return "\n".join(lines)
