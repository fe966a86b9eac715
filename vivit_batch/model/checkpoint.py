"""`CheckpointInfo`: where a model's weights came from, as `load_pretrained` resolved them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vivit_batch.processor import ProcessorConfig


@dataclass(frozen=True)
class CheckpointInfo:
    source: str
    revision: str | None
    directory: Path
    weight_files: tuple[Path, ...]
    weights_sha256: str
    processor: ProcessorConfig
    processor_file: str | None
    """which of `PREPROCESSOR_FILES` `processor` was read from; None: defaults, no file"""
    commit: str | None = None
    """for hub sources: the commit the revision resolved to (load it to get these files)"""
