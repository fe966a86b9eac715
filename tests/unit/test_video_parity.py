"""The stage's pixels against the Hugging Face recipe: the page's `read_video_pyav` at the same
frame indices, then `transformers.VivitImageProcessor` (the PIL-based processor; transformers 5
still ships it, and PIL must be installed for it)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vivit_batch.config import SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.checkpoints import TINY
from vivit_batch.testing.media import has_encoder, write_video
from vivit_batch.testing.reference import image_processor, read_video_pyav
from vivit_batch.video import DecodeRequest, decode_video
from vivit_batch.video.sampling import frame_positions

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL", reason="VivitImageProcessor resizes with PIL")

SAMPLING = SamplingConfig(num_frames=4, frame_sample_rate=2)


@pytest.fixture(scope="module")
def checkpoint_processor(tmp_path_factory) -> ProcessorConfig:
    """The settings of google/vivit-b-16x2-kinetics400, read back from the preprocessor_config.json
    that transformers writes for them."""
    directory = tmp_path_factory.mktemp("checkpoint")
    transformers.VivitImageProcessor(size={"shortest_edge": 224}).save_pretrained(directory)
    return ProcessorConfig.from_pretrained_dir(directory)[0]


def reference_inputs(path: Path, processor: ProcessorConfig, indices) -> np.ndarray:
    """Model input (T, 3, H, W) from the page's recipe."""
    hf_processor = image_processor(processor)
    with av.open(str(path)) as container:
        video = read_video_pyav(container, indices)
    return hf_processor(list(video), return_tensors="np")["pixel_values"][0]


def stage_inputs(clip: np.ndarray, processor: ProcessorConfig) -> np.ndarray:
    """Model input (T, 3, H, W) from a uint8 clip (T, H, W, 3), as the inference stage makes it."""
    scale, shift = processor.pixel_affine()
    return (clip.astype(np.float32) * scale + shift).transpose(0, 3, 1, 2)


def to_255(inputs: np.ndarray, processor: ProcessorConfig) -> np.ndarray:
    scale, shift = processor.pixel_affine()
    return (inputs - shift[:, None, None]) / scale[:, None, None]


def stage_and_reference(path: Path, processor: ProcessorConfig, total: int):
    video = decode_video(DecodeRequest(str(path), SAMPLING, processor))
    indices = frame_positions(total, SAMPLING)[0]
    return video.clips[0], reference_inputs(path, processor, indices)


PARITY_CASES = [
    # (name, width, height, content, codec, pix_fmt)
    ("tiny-upscaled.mp4", 64, 48, "index", "libx264", "yuv420p"),
    ("qvga.mp4", 320, 240, "detailed", "libx264", "yuv420p"),
    ("odd.webm", 321, 241, "detailed", "libvpx-vp9", "yuv420p"),
    ("portrait.mp4", 360, 640, "detailed", "libx264", "yuv420p"),
    ("hd.mp4", 1280, 720, "detailed", "libx264", "yuv420p"),
    ("full-hd.mp4", 1920, 1080, "detailed", "libx264", "yuv420p"),
    ("full-hd-index.mkv", 1920, 1080, "index", "libx264", "yuv420p"),
    ("full-range.avi", 640, 360, "detailed", "mjpeg", "yuvj420p"),
]


@pytest.mark.parametrize(
    ("name", "width", "height", "content", "codec", "pix_fmt"),
    PARITY_CASES,
    ids=[case[0] for case in PARITY_CASES],
)
def test_pixels_match_vivit_image_processor(
    tmp_path, checkpoint_processor, name, width, height, content, codec, pix_fmt
):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    path = write_video(
        tmp_path / name,
        num_frames=10,
        width=width,
        height=height,
        content=content,
        codec=codec,
        pix_fmt=pix_fmt,
    )
    clip, reference = stage_and_reference(path, checkpoint_processor, 10)
    assert clip.shape == (4, 224, 224, 3)
    np.testing.assert_allclose(stage_inputs(clip, checkpoint_processor), reference, atol=0.1)
    difference = np.abs(clip.transpose(0, 3, 1, 2) - to_255(reference, checkpoint_processor))
    assert difference.mean() <= 1.0  # the requirement; measured: at most 0.002
    assert difference.max() <= 1.01  # PIL and torch round a handful of pixels differently


def test_default_processor_settings_match_too(tmp_path):
    """`VivitImageProcessor()` with no config: short side 256, centre crop 224."""
    path = write_video(tmp_path / "v.mp4", num_frames=10, width=640, height=360, content="detailed")
    processor = ProcessorConfig()
    clip, reference = stage_and_reference(path, processor, 10)
    difference = np.abs(clip.transpose(0, 3, 1, 2) - to_255(reference, processor))
    assert difference.mean() <= 1.0


def test_embeddings_of_both_inputs_agree(tmp_path, checkpoint_processor):
    path = write_video(tmp_path / "v.mp4", num_frames=24, width=640, height=360, content="detailed")
    sampling = SamplingConfig(num_frames=8, frame_sample_rate=2)
    clip = decode_video(DecodeRequest(str(path), sampling, checkpoint_processor)).clips[0]
    reference = reference_inputs(path, checkpoint_processor, frame_positions(24, sampling)[0])
    torch.manual_seed(0)
    larger_frames = {"image_size": 224, "num_frames": 8, "tubelet_size": [2, 16, 16]}
    wider = {"hidden_size": 64, "intermediate_size": 128}
    config = transformers.VivitConfig(**{**TINY, **larger_frames, **wider})
    model = transformers.VivitForVideoClassification(config).eval()

    def embedding(inputs: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            pixel_values = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))[None]
            return model.vivit(pixel_values=pixel_values).last_hidden_state[:, 0]

    ours, theirs = embedding(stage_inputs(clip, checkpoint_processor)), embedding(reference)
    relative_error = (torch.linalg.norm(ours - theirs) / torch.linalg.norm(theirs)).item()
    assert relative_error < 0.01
