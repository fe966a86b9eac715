"""Parity with transformers' ViViT, checkpoint loading, errors and position interpolation."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc

import numpy as np
import pytest
import torch

from tests.helpers.models import assert_parity, load_in_subprocess, make_hub_cache, random_pixels
from vivit_batch.config import load_config
from vivit_batch.errors import CheckpointError
from vivit_batch.inference import VideoClassifier
from vivit_batch.job import prepare_job
from vivit_batch.model import VivitConfig, inspect_pretrained, load_pretrained
from vivit_batch.model.loading import read_weights
from vivit_batch.model.modeling import VivitEmbeddings
from vivit_batch.processor import PREPROCESSOR_FILE, VIDEO_PREPROCESSOR_FILE, ProcessorConfig
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video

CONFIGS = {
    "tiny": {},
    "wide-heads": dict(hidden_size=48, num_attention_heads=6, intermediate_size=80, num_labels=3),
    "deep-tubelet": dict(
        num_hidden_layers=3, tubelet_size=[4, 4, 4], num_frames=8, image_size=16, num_labels=7
    ),
    "non-square-tubelet": dict(
        tubelet_size=[1, 16, 8],
        num_frames=3,
        image_size=48,
        hidden_size=24,
        num_attention_heads=2,
        num_labels=11,
        hidden_act="gelu",
    ),
}


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_embeddings_match_transformers(tmp_path, name, weights):
    hf_model = make_checkpoint(tmp_path, weights=weights, **CONFIGS[name])
    ours = load_pretrained(tmp_path)
    assert ours.config.num_labels == hf_model.config.num_labels
    assert ours.config.id2label == hf_model.config.id2label
    assert_parity(hf_model, ours, random_pixels(ours.config))


def test_sharded_checkpoint_loads_through_its_index(tmp_path):
    hf_model = make_checkpoint(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load_pretrained(tmp_path)
    assert len(ours.checkpoint.weight_files) > 1
    assert_parity(hf_model, ours, random_pixels(ours.config))


def test_weights_file_as_source_and_sha256_fingerprint(tmp_path):
    make_checkpoint(tmp_path, weights="bin")
    weights = tmp_path / "pytorch_model.bin"
    model = load_pretrained(weights)
    assert model.checkpoint.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_published_config_json_is_read_as_transformers_reads_it():
    """The hub's config: odd architecture spelling, `video_size`, no num_frames/image_size."""
    published = {
        "architectures": ["ViViTForVideoClassification"],
        "video_size": [32, 224, 224],
        "tubelet_size": [2, 16, 16],
        "hidden_act": "gelu_fast",
        "id2label": {"0": "abseiling", "1": "air drumming"},
        "label2id": {"abseiling": 0, "air drumming": 1},
        "model_type": "vivit",
        "torch_dtype": "float32",
        "transformers_version": "4.30.0.dev0",
    }
    config = VivitConfig.from_dict(published)
    assert (config.num_frames, config.image_size) == (32, 224)
    assert config.id2label == {0: "abseiling", 1: "air drumming"}
    assert config.token_grid == (16, 14, 14)


def test_config_for_another_architecture_is_refused():
    with pytest.raises(ValueError, match="BertModel"):
        VivitConfig.from_dict({"architectures": ["BertModel"]})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"num_labels": 10**9}, "num_labels is 1000000000: expected a whole number from 1 to"),
        ({"id2label": "everything"}, "id2label is everything: expected an object"),
        ({"hidden_size": 2**40}, "hidden_size is 1099511627776"),
        ({"num_hidden_layers": -1}, "num_hidden_layers is -1"),
        ({"image_size": "224"}, "image_size is 224: expected a whole number"),
        ({"num_frames": 10**6}, "num_frames is 1000000"),
        ({"tubelet_size": [2, 16]}, "tubelet_size is [2, 16]"),
        ({"tubelet_size": [2, 10**6, 16]}, "tubelet_size is"),
    ],
)
def test_checkpoint_config_sizes_are_bounded_before_anything_is_built(tmp_path, change, named):
    """A hostile config.json ends in a CheckpointError (exit 2) naming the key, having built
    nothing of its size: a billion labels would be 60 GB of label strings."""
    make_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("id2label"), config.pop("label2id")
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=re.escape(named)):
            inspect_pretrained(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    finally:
        tracemalloc.stop()


def test_hub_repo_id_loads_offline_from_the_cache(tmp_path):
    """Also: the preprocessing of a newer transformers' checkpoint is fetched."""
    make_checkpoint(tmp_path / "ckpt", weights="bin")
    (tmp_path / "ckpt" / PREPROCESSOR_FILE).rename(tmp_path / "ckpt" / VIDEO_PREPROCESSOR_FILE)
    commit = make_hub_cache(tmp_path / "hf", "google/vivit-test", tmp_path / "ckpt")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    expected = hashlib.sha256((tmp_path / "ckpt" / "pytorch_model.bin").read_bytes()).hexdigest()
    for revision in (None, commit):
        result = load_in_subprocess("google/vivit-test", env, revision)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [expected, 5, VIDEO_PREPROCESSOR_FILE]


def test_uncached_repo_offline_names_the_remedy(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = load_in_subprocess("google/not-cached", env)
    assert result.returncode != 0
    assert "CheckpointError" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr and "local directory" in result.stderr


LOADERS = {"load": load_pretrained, "inspect": inspect_pretrained}
"""`inspect_pretrained` (the driver's check) must refuse whatever `load_pretrained` refuses."""


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_missing_and_unexpected_keys_are_listed(tmp_path, loader, weights):
    make_checkpoint(tmp_path, weights=weights)
    file = tmp_path / ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")
    state, _ = read_weights((file,))
    state["vivit.encoder.layer.0.extra.weight"] = state.pop("classifier.weight")
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, file)
    else:
        torch.save(state, file)
    with pytest.raises(CheckpointError) as error:
        LOADERS[loader](tmp_path)
    assert "missing keys (1): classifier.weight" in str(error.value)
    assert "unexpected keys (1): vivit.encoder.layer.0.extra.weight" in str(error.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_shape_mismatch_names_both_shapes(tmp_path, loader):
    make_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"intermediate.dense.weight: checkpoint has shape "
        r"\(64, 32\), config.json implies \(128, 32\)",
    ):
        LOADERS[loader](tmp_path)


class Payload:
    """Anything that is not a tensor makes a pickle that weights_only loading refuses."""


def test_pickle_needing_code_is_refused(tmp_path):
    make_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(1), "payload": Payload()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="refuses"):
        load_pretrained(tmp_path)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_pretrained(tmp_path / "absent")


def embeddings_with_coded_positions(time: int, rows: int, cols: int) -> VivitEmbeddings:
    """Position embedding whose dims 0/1/2 are the token's time/row/column coordinate."""
    config = VivitConfig(
        num_frames=time,
        image_size=rows,
        tubelet_size=(1, 1, 1),
        hidden_size=4,
        num_attention_heads=1,
    )
    assert rows == cols
    embeddings = VivitEmbeddings(config)
    t, r, c = torch.meshgrid(
        torch.arange(time), torch.arange(rows), torch.arange(cols), indexing="ij"
    )
    coded = torch.stack([t, r, c, torch.zeros_like(t)], dim=-1).float().reshape(1, -1, 4)
    with torch.no_grad():
        embeddings.position_embeddings[:, 1:] = coded
        embeddings.position_embeddings[:, 0] = 7.0
    return embeddings


@torch.no_grad()
def test_position_interpolation_keeps_time_and_space_apart():
    embeddings = embeddings_with_coded_positions(time=4, rows=6, cols=6)
    positions = embeddings.positions_for((8, 6, 9))
    assert positions.shape == (1, 1 + 8 * 6 * 9, 4)
    assert torch.all(positions[0, 0] == 7.0)
    grid = positions[0, 1:].reshape(8, 6, 9, 4)
    time_code, row_code, col_code = grid[..., 0], grid[..., 1], grid[..., 2]
    # each code varies along its own axis only
    assert torch.allclose(time_code, time_code[:, :1, :1].expand_as(time_code), atol=1e-5)
    assert torch.allclose(row_code, torch.arange(6.0).view(1, 6, 1).expand_as(row_code), atol=1e-5)
    assert torch.allclose(col_code, col_code[:1, :1, :].expand_as(col_code), atol=1e-5)
    # time stretched 4 -> 8: monotonic, spanning the original range
    assert torch.all(time_code[1:, 0, 0] >= time_code[:-1, 0, 0])
    assert float(time_code[0, 0, 0]) == pytest.approx(0, abs=1e-5)
    assert float(time_code[-1, 0, 0]) == pytest.approx(3, abs=1e-5)
    assert torch.equal(embeddings.positions_for((4, 6, 6)), embeddings.position_embeddings)


def test_model_runs_at_other_frame_counts_and_sizes(tmp_path):
    make_checkpoint(tmp_path)
    model = load_pretrained(tmp_path)
    with torch.no_grad():
        output = model(torch.randn(1, 8, 3, 48, 40))
    assert output.logits.shape == (1, 5) and output.embedding.shape == (1, 32)


def test_classifier_normalises_uint8_and_averages_views(tmp_path):
    make_checkpoint(tmp_path)
    model = load_pretrained(tmp_path)
    classifier = VideoClassifier(model, ProcessorConfig(), top_k=3, clips_per_forward=2)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(3, 4, 32, 32, 3), dtype=np.uint8)
    [prediction] = classifier.classify([video])

    pixels = torch.from_numpy(video).permute(0, 1, 4, 2, 3).float() / 63.75 - 3
    with torch.no_grad():
        output = model(pixels)
    probabilities = output.logits.softmax(-1).mean(0)
    scores, ids = probabilities.topk(3)
    assert prediction.label_ids == ids.tolist()
    assert prediction.labels == [f"class_{i}" for i in ids.tolist()]
    np.testing.assert_allclose(prediction.scores, scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(prediction.embedding, output.embedding.mean(0).numpy(), atol=1e-5)


def test_classifier_keeps_videos_apart_in_one_batch(tmp_path):
    make_checkpoint(tmp_path)
    classifier = VideoClassifier(load_pretrained(tmp_path), ProcessorConfig(), top_k=2)
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, size=(v, 4, 32, 32, 3), dtype=np.uint8) for v in (1, 3, 2)]
    together = classifier.classify(videos)
    alone = [classifier.classify([video])[0] for video in videos]
    for a, b in zip(together, alone, strict=True):
        assert a.label_ids == b.label_ids
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_preprocessing_is_read_from_the_video_processor_file_of_newer_transformers(tmp_path):
    processor = ProcessorConfig(shortest_edge=40, crop_height=32, crop_width=32)
    make_checkpoint(tmp_path, processor=processor)
    (tmp_path / PREPROCESSOR_FILE).rename(tmp_path / VIDEO_PREPROCESSOR_FILE)
    checkpoint, _ = inspect_pretrained(tmp_path)
    assert (checkpoint.processor, checkpoint.processor_file) == (processor, VIDEO_PREPROCESSOR_FILE)


def test_a_checkpoint_without_preprocessing_is_labelled_with_a_warning_never_silently(
    tmp_path, caplog
):
    make_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / PREPROCESSOR_FILE).unlink()
    write_video(tmp_path / "a.mp4", num_frames=8, width=32, height=32)
    (tmp_path / "m.txt").write_text(f"{tmp_path / 'a.mp4'}\n")
    config = load_config(
        None,
        [],
        manifest_uri=str(tmp_path / "m.txt"),
        output_uri=str(tmp_path / "out"),
        model_source=str(tmp_path / "ckpt"),
    )
    job = prepare_job(config)  # no Ray: every check before the cluster
    assert job.checkpoint.processor_file is None
    assert job.decode.processor == ProcessorConfig()
    [warning] = job.warnings
    assert "has neither preprocessor_config.json nor video_preprocessor_config.json" in warning
    assert "model.preprocessing" in warning
    assert warning in caplog.text
