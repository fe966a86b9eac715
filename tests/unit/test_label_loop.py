"""The README's loop to one's own classes, two rounds, run as the README writes it: its
`review`, `train-head` and `relabel` lines (the `run` lines need videos and Ray, and are left
out) on a generated output whose classes are clusters of a tiny checkpoint's embedding space,
each review file filled in between as a person would (a few rows left empty)."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pyarrow.compute as pc
import pytest

from tests.helpers.review import README, read_csv
from vivit_batch.cli import main
from vivit_batch.errors import EXIT_OK
from vivit_batch.fingerprint import fingerprint
from vivit_batch.output import Output
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.outputs import Generated, write_generated_output

CLASSES = ("crane", "forklift", "truck")
VIDEOS = 600
SKIPPED_EVERY = 10
"""every 10th line of a review file is left empty: no label, a candidate again"""
LOOP_COMMANDS = ("review", "train-head", "relabel")


def readme_loop() -> list[list[str]]:
    """The arguments of the README loop's `vivit-batch` lines of `LOOP_COMMANDS`, in order."""
    [block] = re.findall(r"```bash\n# readme: loop\n(.*?)```", README.read_text(), re.DOTALL)
    lines = block.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("vivit-batch ")]
    return [arguments for arguments in commands if arguments[0] in LOOP_COMMANDS]


def values_of(arguments: list[str], option: str) -> list[str]:
    """The values given to `option`, in order."""
    return [
        value for name, value in zip(arguments[:-1], arguments[1:], strict=True) if name == option
    ]


def class_of(video_id: str) -> str:
    """A generated video's class: video i is of `CLASSES[i % 3]`."""
    return CLASSES[int(video_id.removeprefix("video-")) % len(CLASSES)]


def fill_in(path: Path) -> set[str]:
    """Give the review file's empty truth column each video's class, but for every
    `SKIPPED_EVERY`th line; returns the videos labelled."""
    lines = read_csv(path)
    header = list(lines[0])
    assert header[-1] == "truth" and all(line["truth"] == "" for line in lines)
    for number, line in enumerate(lines):
        line["truth"] = "" if number % SKIPPED_EVERY == 0 else class_of(line["video_id"])
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header)
        writer.writeheader()
        writer.writerows(lines)
    return {line["video_id"] for line in lines if line["truth"]}


@pytest.fixture
def labels_output(tmp_path, monkeypatch) -> Path:
    """`labels/` in the working directory, as the README names it: `VIDEOS` videos labelled
    with a tiny checkpoint's classes, which the output records as its model."""
    make_checkpoint(tmp_path / "base")
    write_generated_output(
        str(tmp_path / "labels"),
        Generated(
            classes=CLASSES,
            videos=VIDEOS,
            hidden=32,
            weights_sha256=fingerprint((tmp_path / "base" / "model.safetensors",)),
            model=str(tmp_path / "base"),
            labelled_every=VIDEOS + 1,  # the manifest gave one label; the loop uses `truth`
        ),
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path / "labels"


def test_two_rounds_of_the_readme_loop(labels_output, capsys):
    commands = readme_loop()
    assert [arguments[0] for arguments in commands] == [
        "review",
        "train-head",
        "relabel",
        "review",
        "train-head",
        "relabel",
    ]
    labelled: dict[str, set[str]] = {}  # by review file
    for arguments in commands:
        assert main(arguments) == EXIT_OK, arguments
        if arguments[0] == "review":
            [save] = values_of(arguments, "--save")
            picked = [line["video_id"] for line in read_csv(Path(save))]
            assert len(picked) == len(set(picked)) == 200  # each video once
            # none that an earlier file labelled; its empty lines stay candidates
            assert not set(picked) & set().union(*labelled.values()), save
            labelled[save] = fill_in(Path(save))
        if arguments[0] == "train-head":
            files = values_of(arguments, "--labels")
            training = json.loads(Path("my-head/training.json").read_text())
            assert training["labels_files"] == files == list(labelled)
            assert training["rows"] == sum(map(len, labelled.values()))
            assert training["classes"] == list(CLASSES)
    assert [len(videos) for videos in labelled.values()] == [180, 180]
    printed = capsys.readouterr().out
    assert "360 labelled rows (360 videos) of 3 classes in column truth of to-label.csv, " in (
        printed
    )
    # the output names the head by its absolute path: train-head finds it from anywhere
    identity = Output("labels").read_identity() or {}
    assert identity["model_source"] == str(labels_output.parent / "my-head")
    # the output, relabelled twice, holds the new classes: right on the videos nobody labelled
    rows = Output("labels").dataset().to_table(columns=["video_id", "label"])
    assert rows.num_rows == VIDEOS and set(pc.unique(rows["label"]).to_pylist()) == set(CLASSES)
    unlabelled = [
        row for row in rows.to_pylist() if row["video_id"] not in set().union(*labelled.values())
    ]
    right = sum(row["label"] == class_of(row["video_id"]) for row in unlabelled)
    assert right / len(unlabelled) >= 0.95
