"""Configuration: YAML + --set overrides, types, choices, and helpful errors."""

from pathlib import Path

import pytest
import yaml

from vivit_batch.cli import main
from vivit_batch.config import DecodeConfig, JobConfig, SamplingConfig, all_keys, load_config
from vivit_batch.errors import ConfigError
from vivit_batch.settings import BYTES, SECONDS, rule_of, show
from vivit_batch.storage import job_storage_options

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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
    assert "sampling.num_frames must be a whole number, got 'zero'" in message
    assert (
        "sampling.temporal_views must be one of center, uniform, random, segments, got 'middle'"
        in message
    )
    assert "resources.batch_size must be at least 1, got 0" in message
    assert "decode.crash_retries must be at least 0, got -1" in message


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["model.top_k"])


def test_shipped_configs_load_with_every_value_they_set():
    for path in CONFIGS.glob("*.yaml"):
        loaded = load_config(path).to_dict()
        for section, values in yaml.safe_load(path.read_text()).items():
            for key, value in values.items():
                assert loaded[section][key] == value, f"{path.name}: {section}.{key}"
    views = load_config(CONFIGS / "kinetics400-4x3.yaml").sampling
    assert (views.num_temporal_views, views.spatial_crops) == (4, "three")
    assert views.frame_sample_rate == 2


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (["sampling.num_temporal_views=3"], "sampling.num_temporal_views=3 needs"),
        (["sampling.temporal_views=random", "sampling.num_temporal_views=2"], "needs"),
        (["decode.timeout_s=0"], "decode.timeout_s must be more than 0s, got 0s"),
        (["decode.max_memory_bytes=lots"], "decode.max_memory_bytes must be a size in bytes"),
        (["run.lock_stale_after_s=soon"], "run.lock_stale_after_s must be a duration"),
        (["run.max_error_fraction=2"], "run.max_error_fraction must be at most 1, got 2"),
        (["resources.inference_gpus=-1"], "resources.inference_gpus must be at least 0"),
        (["model.top_k=2.5"], "model.top_k must be a whole number, got 2.5"),
        (["manifest.allow_http=maybe"], "manifest.allow_http must be true or false"),
        (["output.partition_by=day"], "output.partition_by must be one of run_date"),
        (["run.run_id=../x"], "run.run_id must be 1 to 128 letters, digits"),
        (["run.run_id=a/b"], "run.run_id must be"),
        ([f"run.run_id={'x' * 129}"], "run.run_id must be"),
        (["model.top_k=[1"], "--set model.top_k is not valid YAML"),
    ],
)
def test_each_bad_value_or_combination_is_a_config_error_naming_the_key(settings, named):
    with pytest.raises(ConfigError, match=named) as error:
        load_config(None, settings)
    assert "Config(" not in str(error.value) and "Limits" not in str(error.value)


def test_sizes_and_durations_take_units():
    config = load_config(
        None,
        ["decode.max_memory_bytes=2GiB", "decode.max_file_bytes=500MB", "decode.timeout_s=5m"]
        + ["decode.max_duration_s=6h", "run.lock_wait_s=90s", "storage.timeout_s=30"],
    )
    assert (config.decode.max_memory_bytes, config.decode.max_file_bytes) == (2 * 2**30, 5 * 10**8)
    assert (config.decode.timeout_s, config.decode.max_duration_s) == (300, 6 * 3600)
    assert (config.run.lock_wait_s, config.storage.timeout_s) == (90, 30)
    assert (show(2 * 2**30, BYTES), show(300.0, SECONDS), show(21600, SECONDS)) == (
        "2GiB",
        "5m",
        "6h",
    )


def test_every_key_is_declared_once_with_help():
    for key, (item, _kind) in all_keys().items():
        assert rule_of(item).help, f"{key} has no help text"
    # the video layer's settings are the configuration's sections, not copies of them
    assert JobConfig().decode == DecodeConfig() and JobConfig().sampling == SamplingConfig()


def test_run_help_shows_each_key_with_its_description_and_unit(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    printed = capsys.readouterr().out
    for key, (item, _kind) in all_keys().items():
        assert f"  {key}  (" in printed
        assert rule_of(item).help.split()[0] in printed
    assert "decode.max_memory_bytes  (size; default 4GiB)" in printed
    assert "decode.timeout_s  (duration; default 5m)" in printed


def test_readme_documents_every_key():
    readme = (CONFIGS.parent / "README.md").read_text()
    missing = [key for key in all_keys() if f"`{key}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_a_bad_combination_exits_2_naming_the_key_before_anything_starts(tmp_path, capsys):
    arguments = ["--manifest", "m.csv", "--output", str(tmp_path / "out"), "--model", "ckpt"]
    bad = ["--set", "sampling.num_temporal_views=3", "--set", "decode.timeout_s=soon"]
    assert main(["run", *arguments, *bad]) == 2
    printed = capsys.readouterr().err
    assert "sampling.num_temporal_views=3 needs sampling.temporal_views=uniform" in printed
    assert "decode.timeout_s must be a duration" in printed
    assert "Traceback" not in printed and not (tmp_path / "out").exists()


def test_run_ids_people_and_the_default_write_are_accepted():
    for run_id in ("nightly-2026.11.30_a", "20261130T184238Z-01084f", "x" * 128):
        assert load_config(None, [f"run.run_id={run_id}"]).run.run_id == run_id


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    """Under 400 bytes that expand to 9^9 strings ("billion laughs") if aliases are followed."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghi"
    lines += [
        f"{names[i]}: &{names[i]} [{','.join(['*' + names[i - 1]] * 9)}]" for i in range(1, 9)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    arguments = ["--manifest", "m.csv", "--output", str(tmp_path / "out"), "--model", "ckpt"]
    assert main(["run", "--config", str(bomb), *arguments]) == 2
    printed = capsys.readouterr().err
    assert "line 2: YAML aliases (*a) are not accepted" in printed
    assert len(printed) < 500
    with pytest.raises(ConfigError, match="aliases"):
        load_config(None, ["model.top_k=[&x 1, *x]"])


def test_error_messages_quote_at_most_a_little_of_a_long_value():
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"model.top_k={'9' * 100_000}x"])
    assert "model.top_k must be a whole number, got '999" in str(error.value)
    assert "(100003 characters)" in str(error.value) and len(str(error.value)) < 300


def test_a_list_setting_takes_a_yaml_list_or_comma_separated_text(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("manifest:\n  http_allow_hosts: [cdn.internal, '10.0.0.5:8080']\n")
    hosts = ("cdn.internal", "10.0.0.5:8080")
    assert load_config(path).manifest.http_allow_hosts == hosts
    comma = load_config(None, ["manifest.http_allow_hosts=cdn.internal, 10.0.0.5:8080"])
    assert comma.manifest.http_allow_hosts == hosts
    assert load_config(None, ["manifest.http_allow_hosts=[a]"]).manifest.http_allow_hosts == ("a",)
    assert job_storage_options(comma)["http_allow_hosts"] == hosts
    with pytest.raises(ConfigError, match="http_allow_hosts must be a list of text"):
        load_config(None, ["manifest.http_allow_hosts=[a, [b]]"])


def test_a_list_setting_is_shown_as_a_list_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "manifest.http_allow_hosts  (list of text; default [])" in capsys.readouterr().out
