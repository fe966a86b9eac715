"""The shipped demo checkpoint: a standard Hugging Face checkpoint that labels motion correctly.

Parity is checked against the Hugging Face page's recipe: `read_video_pyav` at the frame indices
our decode samples, `VivitImageProcessor` from the shipped preprocessor_config.json, and
`transformers.VivitForVideoClassification` with the shipped weights.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from vivit_batch.demo import CHECKPOINT_DIR, MOTION_CLASSES, write_sample_set
from vivit_batch.demo.train import PROCESSOR, inference_sampling
from vivit_batch.inference import VideoClassifier
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.reference import read_video_pyav
from vivit_batch.video import DecodeRequest, decode_video
from vivit_batch.video.sampling import frame_positions

transformers = pytest.importorskip("transformers")

HELD_OUT_SEED = 2024  # neither the training seed (0) nor its validation seed (7919)
HELD_OUT_VIDEOS = 28


@pytest.fixture(scope="module")
def theirs():
    return transformers.VivitForVideoClassification.from_pretrained(CHECKPOINT_DIR).eval()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, ours):
    """(video, decoded) pairs: fresh videos decoded as the job decodes them for this checkpoint."""
    videos = write_sample_set(tmp_path_factory.mktemp("held-out"), HELD_OUT_VIDEOS, HELD_OUT_SEED)
    sampling = inference_sampling(ours.config.num_frames)
    return [
        (video, decode_video(DecodeRequest(str(video.path), sampling, PROCESSOR)))
        for video in videos
    ]


def test_checkpoint_is_small_with_readable_labels_and_the_training_processor():
    config = json.loads((CHECKPOINT_DIR / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(MOTION_CLASSES))] == list(MOTION_CLASSES)
    assert ProcessorConfig.from_pretrained_dir(CHECKPOINT_DIR) == (
        PROCESSOR,
        "preprocessor_config.json",
    )
    assert (CHECKPOINT_DIR / "model.safetensors").stat().st_size <= 5 * 2**20


def test_transformers_loads_the_checkpoint_unchanged_with_the_same_logits(ours, theirs, held_out):
    clips = np.stack([decoded.clips[0] for _, decoded in held_out[:4]])
    scale, shift = (torch.from_numpy(v).view(1, 1, 3, 1, 1) for v in PROCESSOR.pixel_affine())
    pixels = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() * scale + shift
    with torch.no_grad():
        expected = theirs(pixel_values=pixels).logits
        actual = ours(pixels).logits
    assert theirs.config.id2label == ours.config.id2label
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_reference_recipe_gives_the_same_labels_and_they_are_right(ours, theirs, held_out):
    sampling = inference_sampling(ours.config.num_frames)
    image_processor = transformers.VivitImageProcessor.from_pretrained(CHECKPOINT_DIR)
    predictions = VideoClassifier(ours, PROCESSOR, top_k=1).classify(
        [decoded.clips for _, decoded in held_out]
    )
    reference = []
    for video, decoded in held_out:
        indices = frame_positions(decoded.metadata.num_frames, sampling)[0]
        with av.open(str(video.path)) as container:
            frames = read_video_pyav(container, indices)
        inputs = image_processor(list(frames), return_tensors="pt")
        with torch.no_grad():
            label_id = theirs(**inputs).logits.argmax(-1).item()
        reference.append(theirs.config.id2label[label_id])

    labels = [prediction.labels[0] for prediction in predictions]
    truth = [video.label for video, _ in held_out]
    agreement = np.mean([a == b for a, b in zip(labels, reference, strict=True)])
    accuracy = np.mean([a == b for a, b in zip(labels, truth, strict=True)])
    assert agreement >= 0.98, list(zip(truth, labels, reference, strict=True))
    assert accuracy >= 0.95, list(zip(truth, labels, strict=True))
