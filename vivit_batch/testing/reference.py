"""The Hugging Face ViViT page's recipe, the reference our decode and preprocessing must match:
its `read_video_pyav`, and `transformers.VivitImageProcessor` with our processor's settings."""

from __future__ import annotations

import numpy as np

from vivit_batch.processor import ProcessorConfig


def read_video_pyav(container, indices):
    """Verbatim from the Hugging Face ViViT page."""
    frames = []
    container.seek(0)
    start_index = indices[0]
    end_index = indices[-1]
    for i, frame in enumerate(container.decode(video=0)):
        if i > end_index:
            break
        if i >= start_index and i in indices:
            frames.append(frame)
    return np.stack([x.to_ndarray(format="rgb24") for x in frames])


def image_processor(processor: ProcessorConfig):
    """`VivitImageProcessor` configured as `processor` (needs transformers and PIL)."""
    from transformers import VivitImageProcessor

    settings = {k: v for k, v in processor.to_dict().items() if k != "image_processor_type"}
    return VivitImageProcessor(**settings)
