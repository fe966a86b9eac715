"""Configuration: YAML + --set overrides, types, choices, and helpful errors."""

from pathlib import Path

import pytest

from vivit_batch.config import ConfigError, JobConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_then_overrides_then_flags(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  top_k: 3\nsampling:\n  frame_sample_rate: 2\n")
    config = load_config(
        path,
        ["sampling.frame_sample_rate=8", "decode.max_pixels=null", "run.max_error_fraction=1"],
        model_source="ckpt",
    )
    assert config.model.top_k == 3
    assert config.sampling.frame_sample_rate == 8
    assert config.decode.max_pixels is None
    assert config.run.max_error_fraction == 1.0
    assert config.model.source == "ckpt"


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        load_config(
            None,
            [
                "model.topk=3",
                "sampling.num_frames=zero",
                "sampling.temporal_views=middle",
                "resources.batch_size=0",
                "decode.crash_retries=-1",
            ],
        )
    message = str(error.value)
    assert "unknown key 'model.topk'; did you mean 'model.top_k'?" in message
    assert "sampling.num_frames must be int, got 'zero'" in message
    assert "sampling.temporal_views must be one of ['center', 'random', 'uniform']" in message
    assert "resources.batch_size must be positive" in message
    assert "decode.crash_retries must be 0 or more, got -1" in message


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["model.top_k"])


def test_shipped_configs_are_valid():
    for path in CONFIGS.glob("*.yaml"):
        assert isinstance(load_config(path), JobConfig), path
    views = load_config(CONFIGS / "kinetics400-4x3.yaml").sampling
    assert (views.num_temporal_views, views.spatial_crops) == (4, "three")
    assert views.frame_sample_rate == 2


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
