"""The labelling job end to end on a real Ray cluster: manifest -> Parquet, CLI and exit codes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tests.helpers.jobs import run, write_csv
from tests.helpers.logs import LOG_LINE
from vivit_batch.cli import main
from vivit_batch.config import SamplingConfig
from vivit_batch.inference import VideoClassifier
from vivit_batch.job import pipeline
from vivit_batch.model import load_pretrained
from vivit_batch.output import Output, output_schema
from vivit_batch.processor import PREPROCESSOR_FILE, VIDEO_PREPROCESSOR_FILE
from vivit_batch.testing.media import write_video
from vivit_batch.video import DecodeRequest, decode_video

GOOD_VIDEOS = [  # name, encoder, size, frames
    ("a.mp4", "libx264", (64, 48), 24),
    ("b.mkv", "libx264", (48, 64), 30),
    ("c.avi", "mpeg4", (80, 60), 20),
    ("d.mov", "libx264", (96, 54), 40),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("videos")
    made = {}
    for name, codec, (width, height), frames in GOOD_VIDEOS:
        made[name] = write_video(
            directory / name,
            codec=codec,
            width=width,
            height=height,
            num_frames=frames,
            content="detailed",
        )
    (directory / "notes.mp4").write_text("this is not a video\n")
    made["notes.mp4"] = directory / "notes.mp4"
    return made


def read_rows(output: Path) -> pd.DataFrame:
    return ds.dataset(output).to_table().to_pandas()


def test_run_writes_one_row_per_entry_with_the_documented_schema(
    ray_cluster, tmp_path, checkpoint, videos, capsys
):
    """Also: a ground-truth `label` column kept under manifest.column_prefix; a checkpoint that
    keeps its preprocessing in video_preprocessor_config.json (newer transformers); the log
    lines of a run that no terminal watches (times, levels, progress lines, no bars)."""
    rows = [
        {"uri": str(videos[name]), "video_id": f"vid-{i:03d}", "split": f"s{i % 2}", "weight": i}
        for i, name in enumerate(videos)
    ]
    rows.append(
        {
            "uri": str(tmp_path / "missing.mp4"),
            "video_id": "vid-missing",
            "split": "s0",
            "weight": 99,
        }
    )
    rows = [{**row, "label": f"truth-{i}"} for i, row in enumerate(rows)]
    manifest = write_csv(tmp_path / "manifest.csv", rows)
    output = tmp_path / "out"
    newer = shutil.copytree(checkpoint, tmp_path / "newer-checkpoint")
    (newer / PREPROCESSOR_FILE).rename(newer / VIDEO_PREPROCESSOR_FILE)

    settings = ["run.max_error_fraction=0.5", "model.top_k=3", "manifest.column_prefix=m_"]
    settings.append("run.progress_every_s=0.2")
    assert run(manifest, output, newer, *[f"--set={setting}" for setting in settings]) == 0
    logged = capsys.readouterr().err.splitlines()
    assert [line for line in logged if not LOG_LINE.match(line)] == []
    assert any(" INFO progress: " in line and "/6 videos" in line for line in logged), logged
    assert not any("\r" in line or "Resources(" in line for line in logged)

    table = ds.dataset(output).to_table()
    expected = output_schema(32)
    assert table.schema.names[: len(expected)] == expected.names
    for field in expected:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.names[len(expected) :] == ["m_split", "m_weight", "m_label"]

    frame = table.to_pandas().set_index("video_id").sort_index()
    assert sorted(frame.index) == sorted(r["video_id"] for r in rows)
    assert frame.loc["vid-004", "error_code"] == "unreadable"
    assert frame.loc["vid-missing", "error_code"] == "not_found"
    assert "missing.mp4" in frame.loc["vid-missing", "error_message"]
    ok = frame[frame.status == "ok"]
    assert len(ok) == 4 and ok.error_code.isna().all()
    assert (frame.loc["vid-000", ["width", "height"]] == [64, 48]).all()
    assert frame.loc["vid-003", "m_split"] == "s1" and frame.loc["vid-003", "m_weight"] == 3
    assert frame.loc["vid-003", "m_label"] == "truth-3" and frame.loc["vid-003", "label"]
    assert frame.loc[frame.status == "error", "embedding"].isna().all()
    assert ok.topk_labels.map(len).eq(3).all()
    assert (ok.label == ok.topk_labels.map(lambda x: x[0])).all()
    assert ok.model_sha256.nunique() == 1 and ok.run_id.nunique() == 1

    # DuckDB's glob sees only committed data files.
    glob = f"{output}/**/*.parquet"
    [(count,)] = duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()
    assert count == len(rows)

    # The report says what happened.
    [report] = Output(str(output)).read_reports()
    assert report.counts["status"] == {"ok": 4, "error": 2}
    assert report.counts["error_code"] == {"unreadable": 1, "not_found": 1}
    assert report.model.weights_sha256 == ok.model_sha256.iloc[0]
    assert report.model.preprocessor_file == VIDEO_PREPROCESSOR_FILE
    assert report.model.preprocessing == load_pretrained(checkpoint).checkpoint.processor.to_dict()
    assert {"python", "torch", "ray", "av"} <= set(report.versions)
    assert report.throughput.clips == 4
    [device] = report.inference_devices  # what really labelled the rows
    assert (device["device"], device["precision"]) == ("cpu", "fp32")
    assert device["threads"] == report.resources["inference_threads"]
    assert 0 < device["start_s"] < report.wall_seconds  # device, model load and checks
    assert device["torch"] == report.versions["torch"] and not report.warnings
    # The CPU plan came from what the stages cost on the manifest's first three videos.
    measured = report.calibration
    assert measured["failure"] is None and (measured["videos"], measured["clips"]) == (3, 3)
    assert measured["decode_s"] > 0 and measured["inference_s"] > 0
    share = measured["inference_s"] / (measured["decode_s"] + measured["inference_s"])
    assert report.resources["inference_share"] == pytest.approx(share, abs=1e-4)


def test_predictions_match_the_stages_run_directly(
    ray_cluster, tmp_path, checkpoint, videos, capsys, monkeypatch
):
    """The Ray wiring keeps each row's prediction with its video, in files of at most
    `output.rows_per_file` rows, also where an inference actor labels two batches at once in
    threads (as GPU actors do; forced here on the CPU) and where the manifest is labelled in
    two parts (`run.videos_per_part`). bf16 is asked for, which CPU actors cannot autocast:
    they label in fp32 (the same predictions) and the report and the summary say so, once."""
    planned = pipeline.inference_options
    monkeypatch.setattr(
        pipeline,
        "inference_options",
        lambda *args: dataclasses.replace(planned(*args), concurrent_batches=2),
    )
    good = [videos[name] for name, *_ in GOOD_VIDEOS]
    manifest = write_csv(tmp_path / "m.csv", [{"uri": str(p)} for p in good])
    settings = ["--set", "resources.batch_size=3", "--set", "output.rows_per_file=3"]
    settings += ["--set", "run.videos_per_part=3"]
    bf16 = ["--set", "model.precision=bf16"]
    assert run(manifest, tmp_path / "out", checkpoint, *settings, *bf16) == 0
    [report] = Output(str(tmp_path / "out")).read_reports()
    device, other = report.inference_devices  # an actor for each part
    assert device["pid"] != other["pid"]
    assert {(d["precision"], d["requested_precision"]) for d in report.inference_devices} == {
        ("fp32", "bf16")
    }
    assert report.warnings == [device["warning"]] and "in fp32" in device["warning"]
    logged = capsys.readouterr().err
    assert f"warning: {device['warning']}" in logged
    assert "labelling part 2 of 2 (at most 3 videos each)" in logged
    frame = read_rows(tmp_path / "out").set_index("uri")
    files = ds.dataset(tmp_path / "out").get_fragments()
    assert sorted(f.count_rows() for f in files) == [1, 3]  # rows_per_file is an upper bound

    model = load_pretrained(checkpoint)
    processor = model.checkpoint.processor
    classifier = VideoClassifier(model, processor, top_k=5)
    sampling = SamplingConfig(num_frames=4, frame_sample_rate=4)
    for path in good:
        clips = decode_video(DecodeRequest(str(path), sampling, processor)).clips
        [expected] = classifier.classify([clips])
        row = frame.loc[str(path)]
        assert list(row.topk_ids) == expected.label_ids
        np.testing.assert_allclose(row.embedding, expected.embedding, atol=1e-5)


def test_rows_wait_for_a_file_at_most_commit_every_s(ray_cluster, tmp_path, checkpoint, videos):
    """`output.commit_every_s`: rows are committed once the oldest of them has waited that long,
    in a file of fewer than `output.rows_per_file` rows (what a stop or a crash can lose). Each
    video is a batch of its own here, and each comes more than 1 ms after the one before."""
    good = [videos[name] for name, *_ in GOOD_VIDEOS]
    manifest = write_csv(tmp_path / "m.csv", [{"uri": str(p)} for p in good])
    settings = [
        "resources.batch_size=1",
        "output.rows_per_file=1000",
        "output.commit_every_s=0.001",
    ]
    assert run(manifest, tmp_path / "out", checkpoint, *[f"--set={s}" for s in settings]) == 0
    files = [f.count_rows() for f in ds.dataset(tmp_path / "out").get_fragments()]
    assert len(files) >= 2 and sum(files) == len(good)
    [report] = Output(str(tmp_path / "out")).read_reports()
    assert len(report.files) == len(files)


def test_manifest_formats_and_relative_paths(ray_cluster, tmp_path, checkpoint, videos):
    video_dir = videos["a.mp4"].parent
    (video_dir / "list.jsonl").write_text(
        json.dumps({"uri": "c.avi", "tag": {"k": 1}}) + "\n" + json.dumps({"uri": "d.mov"}) + "\n"
    )
    pa_table = pa.table({"uri": ["a.mp4"], "video_id": ["p1"], "meta": [[1, 2]]})
    import pyarrow.parquet as pq

    pq.write_table(pa_table, video_dir / "list.parquet")
    cases = {  # list.txt, the format of the other tests, is read in test_manifest
        "list.jsonl": {"c.avi", "d.mov"},
        "list.parquet": {"a.mp4"},
    }
    for manifest, names in cases.items():
        output = tmp_path / manifest
        assert run(video_dir / manifest, output, checkpoint) == 0, manifest
        frame = read_rows(output)
        assert set(frame.uri) == {str(video_dir / n) for n in names}
        assert (frame.status == "ok").all()
    assert read_rows(tmp_path / "list.parquet").meta.iloc[0].tolist() == [1, 2]

    glob_output = tmp_path / "glob"
    assert (
        run(f"{video_dir}/*.mp4", glob_output, checkpoint, "--set", "run.max_error_fraction=0.5")
        == 0
    )
    assert set(read_rows(glob_output).uri) == {
        str(video_dir / "a.mp4"),
        str(video_dir / "notes.mp4"),
    }


def test_labels_file_overrides_checkpoint_names(ray_cluster, tmp_path, checkpoint, videos):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"name {i}\n" for i in range(5)))
    manifest = write_csv(tmp_path / "m.csv", [{"uri": str(videos["a.mp4"])}])
    assert run(manifest, tmp_path / "out", checkpoint, "--set", f"model.labels={labels}") == 0
    assert read_rows(tmp_path / "out").label.iloc[0].startswith("name ")


def test_error_budget_exceeded_exits_3(ray_cluster, tmp_path, checkpoint, videos):
    rows = [{"uri": str(videos["a.mp4"])}, {"uri": str(videos["notes.mp4"])}]
    manifest = write_csv(tmp_path / "m.csv", rows)
    assert run(manifest, tmp_path / "out", checkpoint, "--set", "run.max_error_fraction=0.25") == 3
    assert len(read_rows(tmp_path / "out")) == 2  # the rows are still written


def test_validate_labels_a_sample_and_writes_nothing(
    ray_cluster, tmp_path, checkpoint, videos, capsys
):
    rows = [{"uri": str(videos["a.mp4"])}, {"uri": str(videos["notes.mp4"])}]
    manifest = write_csv(tmp_path / "m.csv", rows)
    arguments = ["--manifest", str(manifest), "--output", str(tmp_path / "out")]
    assert main(["validate", *arguments, "--model", str(checkpoint), "--videos", "2"]) == 0
    printed = capsys.readouterr().err
    labels = set(json.loads((checkpoint / "config.json").read_text())["id2label"].values())
    [ok_line] = [line for line in printed.splitlines() if " INFO ok " in line]
    assert ok_line.split(": ")[1].split(" (")[0] in labels
    assert f" INFO error {videos['notes.mp4']}: " in printed
    assert "plan: 1 inference actor(s), each" in printed
    assert "inference actor: cpu " in printed and ", fp32, torch " in printed
    assert not (tmp_path / "out").exists()
    assert main(["validate", *arguments, "--model", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    nvdec = ["--model", str(checkpoint), "--set", "decode.device=cuda"]
    assert main(["validate", *arguments, *nvdec]) == 2  # no GPU here: before measuring
    printed = capsys.readouterr().err
    assert "decode.device=cuda, but the cluster has no GPU at start" in printed
    assert "per clip on one core" not in printed
