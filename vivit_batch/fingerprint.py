"""The sha256 that identifies a checkpoint's weights (outputs record it in `model_sha256` and
`_dataset.json`). Apart from `model.loading` so that what only compares weights (`relabel`)
needs no torch."""

from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprint(files: tuple[Path, ...]) -> str:
    """sha256 of the weight files' bytes, in order (for one file: what `sha256sum` prints)."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
