"""`vivit-batch review`: which videos it picks (never one with a truth value, never one twice,
the least certain first, not all of a group of near-duplicates), read file by file from outputs
written with the real sink (three rows per file, no Ray), and the files it writes: CSV and
JSONL to fill in, and Label Studio's task import JSON checked against Label Studio's documented
format and the README's labeling config."""

from __future__ import annotations

import csv
import json
import re
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers.outputs import HIDDEN, START, commit_rows, labelled_rows, new_output
from tests.helpers.review import README, read_csv
from vivit_batch.cli import main
from vivit_batch.config import StorageSection
from vivit_batch.errors import EXIT_OK, EXIT_USAGE
from vivit_batch.output import Output, Unlocked
from vivit_batch.output.schema import SEGMENT_COLUMNS, output_schema
from vivit_batch.review.pick import UncertainPool
from vivit_batch.storage import storage_options

LABELS = ["cat", "dog", "bird"]


@dataclass
class Row:
    video_id: str
    scores: list[float] | None
    """top-k scores, best first (labels: `LABELS` in order); None: an error row"""
    embedding: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0)
    truth: str | None = None
    segment: int | None = None
    """its index in a segments output (each segment 2 s long)"""


def write_output(path: Path, rows: list[Row]) -> Output:
    """A new output of `rows` (see `commit_review_rows`)."""
    return commit_review_rows(new_output(path), rows)


def commit_review_rows(output: Output, rows: list[Row]) -> Output:
    """`rows` committed as a run does, three rows per file (whole videos)."""
    videos = [(r.truth, LABELS[: len(r.scores)], r.scores[0]) if r.scores else None for r in rows]
    table = labelled_rows("night1", [r.video_id for r in rows], videos, START)
    columns = {
        "topk_scores": pa.array([r.scores for r in rows], pa.list_(pa.float32())),
        "embedding": pa.array(
            [r.embedding if r.scores else None for r in rows], pa.list_(pa.float32(), HIDDEN)
        ),
    }
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    segmented = any(r.segment is not None for r in rows)
    if segmented:
        spans = {
            "segment_index": [r.segment for r in rows],
            "segment_start_s": [None if r.segment is None else 2.0 * r.segment for r in rows],
            "segment_end_s": [None if r.segment is None else 2.0 * r.segment + 2 for r in rows],
        }
        for position, (name, values) in enumerate(spans.items(), start=2):
            table = table.add_column(position, name, pa.array(values, SEGMENT_COLUMNS[name]))
    commit_rows(output, table, output_schema(HIDDEN, segments=segmented), START)
    return output


def review(output: Output, tmp_path: Path, *options: str, save: str = "review.csv") -> Path:
    path = tmp_path / save
    assert main(["review", output.uri, "--save", str(path), *options]) == EXIT_OK
    return path


def test_never_a_video_with_a_truth_value_nor_one_twice(tmp_path):
    """A segments output: each video once, as its least certain segment."""
    output = write_output(
        tmp_path / "out",
        [
            Row("a", [0.6, 0.1], segment=0),  # margins 0.5, 0.05, 0.3: segment 1
            Row("a", [0.5, 0.45], segment=1),
            Row("a", [0.5, 0.2], segment=2),
            Row("b", [0.5, 0.5], truth="cat", segment=0),  # the least certain, but labelled
            Row("b", [0.5, 0.5], truth="cat", segment=1),
            Row("c", [0.6, 0.4], truth="", segment=0),  # an empty truth value is none
            Row("d", None),  # an error row
            Row("e", [0.5, 0.4], segment=0),  # a tie between its segments: the first
            Row("e", [0.5, 0.4], segment=1),
        ],
    )
    lines = read_csv(review(output, tmp_path, "--count", "10", "--truth-column", "truth"))
    assert [(line["video_id"], line["margin"]) for line in lines] == [
        ("a", "0.05"),
        ("e", "0.1"),
        ("c", "0.2"),
    ]
    assert [(line["segment_start_s"], line["segment_end_s"]) for line in lines] == [
        ("2.0", "4.0"),
        ("0.0", "2.0"),
        ("0.0", "2.0"),
    ]


def test_videos_labelled_in_labels_files_are_never_picked(tmp_path):
    """`--labels` as train-head reads them: the output's column and the files' values count
    together (by video_id), empty and null values are none, any number of files."""
    output = write_output(
        tmp_path / "out",
        [
            Row("in-output", [0.5, 0.49], truth="cat"),
            Row("in-file", [0.5, 0.48]),
            Row("empty-in-file", [0.5, 0.47]),
            Row("in-second-file", [0.5, 0.46]),
            Row("null-in-second-file", [0.5, 0.45]),
            Row("in-no-file", [0.9, 0.05]),
        ],
    )
    (tmp_path / "first.csv").write_text("video_id,truth\nin-file,dog\nempty-in-file,\n")
    (tmp_path / "second.jsonl").write_text(
        '{"video_id": "in-second-file", "truth": "cat"}\n'
        '{"video_id": "null-in-second-file", "truth": null}\n'
    )
    files = ["--labels", str(tmp_path / "first.csv"), "--labels", str(tmp_path / "second.jsonl")]
    lines = read_csv(review(output, tmp_path, "--count", "10", *files))
    assert [line["video_id"] for line in lines] == [
        "empty-in-file",
        "null-in-second-file",
        "in-no-file",
    ]


def test_a_near_tie_ranks_above_a_confident_row(tmp_path):
    output = write_output(
        tmp_path / "out",
        [
            Row("sure", [0.9, 0.05]),
            Row("tie", [0.41, 0.40, 0.1]),
            Row("single", [0.6]),  # one label kept: its margin is its score
        ],
    )
    [line] = read_csv(review(output, tmp_path, "--count", "1"))
    assert line["video_id"] == "tie"
    lines = read_csv(review(output, tmp_path, "--count", "3"))
    assert [(line["video_id"], float(line["margin"])) for line in lines] == [
        ("tie", pytest.approx(0.01, abs=1e-6)),
        ("single", pytest.approx(0.6, abs=1e-6)),
        ("sure", pytest.approx(0.85, abs=1e-6)),
    ]


def test_near_duplicates_are_not_all_picked(tmp_path):
    """The three least certain are copies of one video: one of them is picked, then the
    uncertain videos farthest from what is picked."""
    copies = [Row(f"copy{i}", [0.5, 0.49 - 0.01 * i]) for i in range(4)]  # margins .01-.04
    distinct = [
        Row("north", [0.6, 0.4], embedding=(0.0, 1.0, 0.0, 0.0)),  # margin 0.2
        Row("east", [0.7, 0.3], embedding=(0.0, 0.0, 1.0, 0.0)),  # 0.4
        Row("west", [0.65, 0.35], embedding=(0.0, 0.0, 0.0, 1.0)),  # 0.3
    ]
    output = write_output(tmp_path / "out", copies + distinct)
    lines = read_csv(review(output, tmp_path, "--count", "3"))
    # seeded with copy0; then all three others are at distance 1: the less certain first
    assert [line["video_id"] for line in lines] == ["copy0", "north", "west"]


def test_only_the_uncertain_pool_is_spread(tmp_path):
    """A confident video far from the rest is left out: k-center looks only at the 5 x N least
    certain, however far the others lie (ten files' candidates, the pool compacted on the way)."""
    near = [
        Row(f"near{i:02}", [0.5, 0.49 - 0.01 * i], embedding=(1.0, 0.01 * i, 0.0, 0.0))
        for i in range(30)
    ]
    far = Row("far", [0.95, 0.01], embedding=(0.0, 0.0, 0.0, 1.0))
    output = write_output(tmp_path / "out", [*near, far])
    lines = read_csv(review(output, tmp_path, "--count", "2"))
    # the pool: near00-near09; the second pick is the one farthest from near00 in it
    assert [line["video_id"] for line in lines] == ["near00", "near09"]


def test_the_pool_keeps_the_least_certain_and_stays_bounded():
    pool = UncertainPool(2)
    for start in range(0, 30, 3):
        margins = [((start + i) * 7) % 30 / 30 for i in range(3)]  # every value once, shuffled
        ids = [f"v{(start + i) * 7 % 30:02}" for i in range(3)]
        pool.offer(pa.table({"video_id": ids, "margin": pa.array(margins, pa.float32())}))
        assert sum(t.num_rows for t in pool._tables) <= 2 * pool.size + 3
    assert pool.table()["video_id"].to_pylist() == ["v00", "v01"]


def test_csv_and_jsonl_have_the_columns_to_fill_in(tmp_path):
    output = write_output(
        tmp_path / "out",
        [
            Row("tie", [0.41, 0.40, 0.1]),
            Row("sure", [0.9, 0.05]),
            Row("known", [0.5, 0.5], truth="dog"),
        ],
    )
    options = ["--count", "5", "--truth-column", "truth"]
    with open(review(output, tmp_path, *options)) as stream:
        header, *lines = list(csv.reader(stream))
    assert header == ["uri", "video_id", "predicted_label", "predicted_score", "margin", "truth"]
    assert lines == [
        ["/videos/tie.mp4", "tie", "cat", "0.41", "0.01", ""],
        ["/videos/sure.mp4", "sure", "cat", "0.9", "0.85", ""],
    ]
    path = review(output, tmp_path, *options, save="review.jsonl")
    objects = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(o) for o in objects] == [header, header]
    assert objects[0] == {
        "uri": "/videos/tie.mp4",
        "video_id": "tie",
        "predicted_label": "cat",
        "predicted_score": 0.41,
        "margin": 0.01,
        "truth": None,
    }
    lines = read_csv(review(output, tmp_path, "--count", "5"))  # no truth column: every video
    assert [line["video_id"] for line in lines] == ["known", "tie", "sure"]
    assert list(lines[0]) == header and lines[0]["truth"] == ""


def test_the_label_studio_file_has_the_documented_task_format(tmp_path):
    """Checked against Label Studio's "Import pre-annotated data into Label Studio" guide
    (labelstud.io/guide/predictions; docs/source/guide/predictions.md in HumanSignal/label-studio)
    and "Get data into Label Studio" (guide/tasks): a JSON list of tasks; a task's `data` holds
    the value each object tag of the labeling config names (`value="$video"` -> `data.video`);
    `predictions` is a list of predictions, each with `model_version` (string), `score` (a
    number for the whole prediction) and `result`, a list of results, each with an `id` (unique:
    "You must use different IDs for each task elements, annotations, predictions and their
    result items"), `from_name` and `to_name` matching the labeling config's control and object
    tag names, `type` the control tag's ("choices") and `value` its value
    (`{"choices": [...]}`). The labeling config is the README's, parsed."""
    output = write_output(
        tmp_path / "out", [Row("tie", [0.41, 0.40, 0.1]), Row("sure", [0.9, 0.05])]
    )
    path = review(output, tmp_path, "--count", "2", "--format", "label-studio", save="t.json")
    tasks = json.loads(path.read_text())
    view = ElementTree.fromstring(readme_labeling_config())
    video, choices = view.find("Video"), view.find("Choices")
    assert video is not None and choices is not None
    data_key = video.get("value", "").removeprefix("$")
    assert isinstance(tasks, list) and len(tasks) == 2
    result_ids = set()
    for task, (video_id, label, score) in zip(
        tasks, [("tie", "cat", 0.41), ("sure", "cat", 0.9)], strict=True
    ):
        assert set(task) == {"data", "predictions"}
        assert task["data"][data_key] == f"/videos/{video_id}.mp4"
        assert task["data"]["video_id"] == video_id
        [prediction] = task["predictions"]
        assert set(prediction) == {"model_version", "score", "result"}
        assert prediction["model_version"] == f"demo ({'ab' * 6})"
        assert prediction["score"] == pytest.approx(score)
        [result] = prediction["result"]
        assert set(result) == {"id", "type", "from_name", "to_name", "value"}
        assert (result["type"], result["from_name"], result["to_name"]) == (
            "choices",
            choices.get("name"),
            video.get("name"),
        )
        assert choices.get("toName") == video.get("name")
        assert result["value"] == {"choices": [label]}
        result_ids.add(result["id"])
    assert len(result_ids) == 2


def readme_labeling_config() -> str:
    """The `<View>` XML block of the README's review section."""
    [config] = re.findall(r"```xml\n(<View>.*?</View>)\n```", README.read_text(), re.DOTALL)
    return config


def test_an_output_on_s3_is_read_with_the_storage_settings_given(s3_server, tmp_path):
    bucket = f"review-{uuid.uuid4().hex[:12]}"
    s3_server.filesystem().mkdir(bucket)
    output = Output(
        f"s3://{bucket}/out", storage_options(StorageSection(endpoint_url=s3_server.endpoint_url))
    )
    output.create()
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    commit_review_rows(output, [Row("sure", [0.9, 0.05]), Row("tie", [0.41, 0.40])])
    endpoint = f"storage.endpoint_url={s3_server.endpoint_url}"
    lines = read_csv(review(output, tmp_path, "--count", "1", "--set", endpoint))
    assert [line["video_id"] for line in lines] == ["tie"]


def test_an_output_without_rows_gives_an_empty_file(tmp_path, capsys):
    output = new_output(tmp_path / "out")
    assert read_csv(review(output, tmp_path, "--count", "3")) == []
    assert "only 0 videos without a truth value are labelled ok" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["nowhere", "--count", "3"], "nowhere: no such output"),
        (["OUT", "--count", "3", "--truth-column", "nope"], "--truth-column nope: the output has"),
        (["OUT", "--count", "0"], "argument --count: must be at least 1, not 0"),
        (["OUT", "--count", "x"], "argument --count: takes a whole number, not 'x'"),
        (["OUT", "--count", "3", "--format", "xml"], "argument --format: invalid choice"),
        (["OUT", "--count", "3", "--labels", "nowhere.csv"], "--labels nowhere.csv cannot be read"),
        (
            ["OUT", "--count", "3", "--labels", "README.md"],
            "--labels README.md: expected a .csv, .jsonl or .parquet file",
        ),
        (
            ["s3://bucket/out", "--count", "3", "--set", "storage.endpoint_url=http://127.0.0.1:9"]
            + ["--set", "storage.max_attempts=1"],
            "s3://bucket/out: cannot read it",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, arguments, expected):
    output = write_output(tmp_path / "out", [Row("tie", [0.41, 0.40])])
    path = {"OUT": output.uri, "nowhere": str(tmp_path / "nowhere")}.get(arguments[0], arguments[0])
    save = tmp_path / "review.csv"
    assert exit_code(["review", path, *arguments[1:], "--save", str(save)]) == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert expected in line
    assert not save.exists()


def exit_code(arguments: list[str]) -> int | str | None:
    """What `vivit-batch ARGUMENTS` exits with (argument errors exit from argparse)."""
    try:
        return main(arguments)
    except SystemExit as exit:
        return exit.code


def test_an_unknown_extension_is_refused_before_reading(tmp_path, capsys):
    save = tmp_path / "review.txt"
    assert main(["review", str(tmp_path / "nowhere"), "--count", "3", "--save", str(save)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "--save" in line and "no review format has the extension .txt" in line


def test_the_readme_join_puts_the_filled_labels_into_the_manifest(tmp_path, monkeypatch):
    output = write_output(
        tmp_path / "out",
        [Row("tie", [0.41, 0.40]), Row("sure", [0.9, 0.05]), Row("known", [0.5, 0.5], truth="dog")],
    )
    path = review(output, tmp_path, "--count", "5", "--truth-column", "truth", save="to-label.csv")
    lines = read_csv(path)
    for line in lines:
        line["truth"] = "cat" if line["video_id"] == "tie" else ""  # "sure" left for later
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    manifest = (
        "video_id,uri,truth\ntie,tie.mp4,\nsure,sure.mp4,\nknown,known.mp4,dog\nnew,new.mp4,\n"
    )
    (tmp_path / "videos.csv").write_text(manifest)
    [snippet] = re.findall(r"```python\n# readme: join\n(.*?)```", README.read_text(), re.DOTALL)
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    assert read_csv(tmp_path / "videos.csv") == [
        {"video_id": "tie", "uri": "tie.mp4", "truth": "cat"},
        {"video_id": "sure", "uri": "sure.mp4", "truth": ""},
        {"video_id": "known", "uri": "known.mp4", "truth": "dog"},
        {"video_id": "new", "uri": "new.mp4", "truth": ""},
    ]
