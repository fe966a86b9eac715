"""ViViT in plain PyTorch, loading Hugging Face checkpoints unchanged."""

from vivit_batch.model.checkpoint import CheckpointInfo
from vivit_batch.model.config import VivitConfig
from vivit_batch.model.loading import (
    DTYPES,
    inspect_pretrained,
    load_pretrained,
    save_pretrained,
)
from vivit_batch.model.modeling import (
    VideoClassifierOutput,
    VivitForVideoClassification,
    VivitModel,
)

__all__ = [
    "DTYPES",
    "CheckpointInfo",
    "VideoClassifierOutput",
    "VivitConfig",
    "VivitForVideoClassification",
    "VivitModel",
    "inspect_pretrained",
    "load_pretrained",
    "save_pretrained",
]
