"""The embedded demo: synthetic motion videos and the tiny ViViT checkpoint trained on them.

The checkpoint in `CHECKPOINT_DIR` is a standard Hugging Face ViViT directory; it expects clips of
its config.json's `num_frames` frames taken every `FRAME_SAMPLE_RATE` frames, resized and cropped
as its preprocessor_config.json says. `python -m vivit_batch.demo.train` rebuilds it.
"""

from pathlib import Path

from vivit_batch.demo.synthetic import (
    MOTION_CLASSES,
    SampleVideo,
    write_corrupt_video,
    write_sample_set,
)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
FRAME_SAMPLE_RATE = 4

__all__ = [
    "CHECKPOINT_DIR",
    "FRAME_SAMPLE_RATE",
    "MOTION_CLASSES",
    "SampleVideo",
    "write_corrupt_video",
    "write_sample_set",
]
