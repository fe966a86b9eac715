"""`vivit-batch train-head`: a head of one's own classes fitted on an output's stored embeddings,
evaluated on held-out videos, saved as a checkpoint that this package and transformers load.

The real-embedding tests use `motion_output` (conftest): the demo model's embeddings of
generated motion videos, whose truth column groups the motions the model separates. The error
cases use small generated outputs (`testing.outputs`) with the embeddings of a tiny checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.models import assert_parity, random_pixels
from vivit_batch.cli import main
from vivit_batch.demo import CHECKPOINT_DIR
from vivit_batch.demo.run import MOTION_GROUPS
from vivit_batch.fingerprint import fingerprint
from vivit_batch.heads.fit import C_GRID
from vivit_batch.model import load_pretrained
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.outputs import Generated, write_generated_output

HEAD_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "training.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, str]:
    """A tiny checkpoint (hidden size 32) and the sha256 of its weights."""
    directory = tmp_path_factory.mktemp("tiny")
    make_checkpoint(directory)
    return directory, fingerprint((directory / "model.safetensors",))


def train(output: Path, save: Path, *extra: str) -> int:
    arguments = ["--truth-column", "manifest_label", "--save", str(save), *extra]
    return main(["train-head", str(output), *arguments])


def generated(tmp_path: Path, tiny: tuple[Path, str], **spec) -> Path:
    settings = {"classes": ("cat", "dog", "fox"), "videos": 30, "hidden": 32, **spec}
    write_generated_output(str(tmp_path / "out"), Generated(weights_sha256=tiny[1], **settings))
    return tmp_path / "out"


def test_a_grouping_of_what_the_model_separates_scores_95_percent_on_held_out_videos(
    motion_output, motion_head
):
    training = json.loads((motion_head / "training.json").read_text())
    groups = sorted(set(MOTION_GROUPS.values()))
    assert training["classes"] == groups
    assert (training["rows"], training["videos"]) == (112, 112)
    held = training["evaluation"]
    assert held["top1"] >= 0.95, held
    assert held["rows"] + held["train_rows"] == 112
    assert sum(c["support"] for c in held["per_class"].values()) == held["rows"]
    assert sum(map(sum, held["confusion"])) == held["rows"]
    assert all(c["support"] >= 1 for c in held["per_class"].values())  # every class held out
    assert training["regularisation"]["C"] in C_GRID
    assert len(training["regularisation"]["cv_log_loss"]) == len(C_GRID)
    base = training["base"]
    assert base["weights_sha256"] == fingerprint((CHECKPOINT_DIR / "model.safetensors",))
    assert base["embeddings_from"] == [base["weights_sha256"]]
    config = json.loads((motion_head / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(groups)}
    assert config["label2id"] == {name: i for i, name in enumerate(groups)}
    original = json.loads((CHECKPOINT_DIR / "config.json").read_text())
    assert {k: v for k, v in config.items() if k not in ("id2label", "label2id")} == {
        k: v for k, v in original.items() if k not in ("id2label", "label2id")
    }
    preprocessor = "preprocessor_config.json"
    assert (motion_head / preprocessor).read_bytes() == (CHECKPOINT_DIR / preprocessor).read_bytes()


def test_the_same_output_and_options_give_the_same_head_bytes(motion_output, motion_head, tmp_path):
    assert train(motion_output.output, tmp_path / "again") == 0
    for name in HEAD_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (motion_head / name).read_bytes(), name


def test_transformers_loads_the_head_with_no_key_problems_and_our_logits(motion_head):
    from transformers import VivitForVideoClassification

    hf_model, info = VivitForVideoClassification.from_pretrained(
        motion_head, output_loading_info=True
    )
    assert {key: list(value) for key, value in info.items() if value} == {}
    ours = load_pretrained(motion_head)
    assert hf_model.config.id2label == ours.config.id2label
    assert_parity(hf_model.eval(), ours, random_pixels(ours.config))
    # the backbone is the base's: the embeddings the head reads are the output's
    base = load_pretrained(CHECKPOINT_DIR)
    pixels = random_pixels(ours.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).embedding, base(pixels).embedding, atol=0, rtol=0)


def test_segment_rows_are_trained_on_and_a_video_s_segments_stay_on_one_side(
    tmp_path, tiny, capsys
):
    output = generated(tmp_path, tiny, segments=4)
    assert train(output, tmp_path / "head", "--model", str(tiny[0])) == 0
    training = json.loads((tmp_path / "head" / "training.json").read_text())
    held = training["evaluation"]
    assert (training["rows"], training["videos"]) == (120, 30)
    assert (held["rows"], held["train_rows"]) == (4 * held["videos"], 4 * held["train_videos"])
    assert held["videos"] + held["train_videos"] == 30
    printed = capsys.readouterr().out
    assert "120 labelled rows (30 videos) of 3 classes in column manifest_label" in printed
    assert f"held out {held['rows']} rows ({held['videos']} videos): top-1" in printed
    assert "  cat " in printed and f"saved to {tmp_path / 'head'}" in printed


def test_one_class_is_exit_2_naming_it(tmp_path, tiny, capsys):
    output = generated(tmp_path, tiny, classes=("cat",))
    assert train(output, tmp_path / "head", "--model", str(tiny[0])) == 2
    error = capsys.readouterr().err
    assert "at least two classes" in error and "'cat' (30 videos)" in error
    assert not (tmp_path / "head").exists()


def test_a_class_with_one_example_is_exit_2_naming_it_and_the_fix(tmp_path, tiny, capsys):
    output = generated(tmp_path, tiny, classes=("cat", "dog") * 4 + ("fox",), videos=9)
    assert train(output, tmp_path / "head", "--model", str(tiny[0])) == 2
    error = capsys.readouterr().err
    assert "too few labelled videos" in error and "'fox' (1)" in error and "'cat'" not in error
    assert "Label more videos of these classes, or drop or merge them" in error


def test_a_column_the_output_lacks_is_exit_2(tmp_path, tiny, capsys):
    output = generated(tmp_path, tiny)
    assert main(["train-head", str(output), "--truth-column", "truth", "--save", "h"]) == 2
    assert (
        "--truth-column truth: the output has no such manifest column; it has manifest_label"
        in (capsys.readouterr().err)
    )


def test_a_backbone_that_did_not_compute_the_embeddings_is_exit_2(tmp_path, tiny, capsys):
    output = generated(tmp_path, tiny)
    other = tmp_path / "other"
    make_checkpoint(other, seed=1)
    assert train(output, tmp_path / "head", "--model", str(other)) == 2
    error = capsys.readouterr().err
    assert f"computed by weights with sha256 {tiny[1][:12]}" in error
    assert "Pass --model with the checkpoint the output was labelled with" in error
    # without --model, the output's recorded model is not on this machine
    assert train(output, tmp_path / "head") == 2
    assert "the output's model /models/generated cannot be loaded here" in capsys.readouterr().err
    assert not (tmp_path / "head").exists()


def test_labels_given_in_a_file_after_the_rows_were_written(tmp_path, tiny, capsys):
    output = generated(tmp_path, tiny, labelled_every=1000)  # only video 0 has a value
    labels = tmp_path / "labels.csv"
    lines = [f"video-{i:07d},{('cat', 'dog', 'fox')[i % 3]}" for i in range(24)]
    lines += ["video-0000024,", "video-9999999,cat"]  # no value; not in the output
    labels.write_text("video_id,label\n" + "\n".join(lines) + "\n")
    arguments = ["--labels", str(labels), "--model", str(tiny[0])]
    assert (
        main(
            [
                "train-head",
                str(output),
                "--truth-column",
                "label",
                "--save",
                str(tmp_path / "h"),
                *arguments,
            ]
        )
        == 0
    )
    training = json.loads((tmp_path / "h" / "training.json").read_text())
    assert (training["rows"], training["labels_files"]) == (24, [str(labels)])
    assert f"24 labelled rows (24 videos) of 3 classes in column label of {labels}" in (
        capsys.readouterr().out
    )


def test_labels_files_and_the_output_s_column_count_together(tmp_path, tiny, capsys):
    """The output's column gives the even videos' classes (5 of each); two files add videos and
    give video 0 (a cat in the output) a new class: with the files' value winning, that class
    has the 3 videos it needs. Files that disagree on a video are exit 2."""
    output = generated(tmp_path, tiny, labelled_every=2)
    (tmp_path / "a.csv").write_text(
        "video_id,manifest_label\nvideo-0000001,owl\nvideo-0000003,owl\nvideo-0000007,\n"
    )
    (tmp_path / "b.jsonl").write_text(
        '{"video_id": "video-0000000", "manifest_label": "owl"}\n'
        '{"video_id": "video-0000009", "manifest_label": "dog"}\n'
    )
    files = ["--labels", str(tmp_path / "a.csv"), "--labels", str(tmp_path / "b.jsonl")]
    assert train(output, tmp_path / "h", "--model", str(tiny[0]), *files) == 0
    training = json.loads((tmp_path / "h" / "training.json").read_text())
    assert (training["rows"], training["classes"]) == (18, ["cat", "dog", "fox", "owl"])
    assert training["labels_files"] == [str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl")]
    source = f"column manifest_label of the output, {tmp_path / 'a.csv'}, {tmp_path / 'b.jsonl'}"
    assert training["truth_from"] == source
    assert f"18 labelled rows (18 videos) of 4 classes in {source}" in capsys.readouterr().out
    (tmp_path / "c.csv").write_text("video_id,manifest_label\nvideo-0000001,cat\n")
    files += ["--labels", str(tmp_path / "c.csv")]
    assert train(output, tmp_path / "h2", "--model", str(tiny[0]), *files) == 2
    assert "more than one manifest_label for video_id video-0000001: keep one" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "h2").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,label\nvideo-0000001,cat\n", "has no video_id column; it has id, label"),
        ("video_id,kind\nvideo-0000001,cat\n", "has no label column; it has video_id, kind"),
        (
            "video_id,label\nvideo-0000001,cat\nvideo-0000001,dog\n",
            ": more than one label for video_id video-0000001: keep one",
        ),
    ],
)
def test_a_labels_file_that_cannot_say_each_video_s_class_is_exit_2(
    tmp_path, tiny, capsys, text, message
):
    output = generated(tmp_path, tiny)
    (tmp_path / "labels.csv").write_text(text)
    arguments = ["--truth-column", "label", "--labels", str(tmp_path / "labels.csv")]
    assert main(["train-head", str(output), *arguments, "--save", str(tmp_path / "h")]) == 2
    assert message in capsys.readouterr().err
