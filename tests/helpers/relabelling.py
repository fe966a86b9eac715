"""What the fast and the end-to-end tests of `test_relabel` share: outputs of generated rows (no
Ray) and a head of a tiny backbone trained on one."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from vivit_batch.cli import main
from vivit_batch.fingerprint import fingerprint
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.outputs import Generated, write_generated_output

CLASSES = ("cat", "dog", "fox")


def tiny_backbone_and_head(directory: Path) -> str:
    """A tiny checkpoint (hidden size 32) in `directory/base` and a head of CLASSES trained on
    its generated embeddings in `directory/head`; returns the sha256 of its weights."""
    make_checkpoint(directory / "base")
    sha256 = fingerprint((directory / "base" / "model.safetensors",))
    output = generate(directory / "labelled", sha256, videos=30)
    arguments = ["--truth-column", "manifest_label", "--save", str(directory / "head")]
    assert main(["train-head", str(output), *arguments, "--model", str(directory / "base")]) == 0
    return sha256


def generate(output: Path, sha256: str, rows_per_file: int = 10, **spec) -> Path:
    """An output of generated rows whose embeddings `sha256`'s weights computed."""
    settings = {"classes": CLASSES, "videos": 60, "hidden": 32, "errors_every": 7, **spec}
    write_generated_output(str(output), Generated(weights_sha256=sha256, **settings), rows_per_file)
    return output


def relabel(output: Path | str, head: Path, *extra: str) -> int:
    return main(["relabel", str(output), "--model", str(head), *extra])


def by_video(table: pa.Table) -> pa.Table:
    return table.sort_by("video_id")
