"""Segments mode end to end (Ray, Parquet) with the shipped demo model: a video whose motion
changes at a known time is labelled along its timeline, the labels follow the change; a short
video is one segment, a broken file one error row; reruns add nothing and `--force` relabels each
video once (also in two parts); a per-video run into the output is refused."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest

from vivit_batch.cli import main
from vivit_batch.config import load_config
from vivit_batch.demo import CHECKPOINT_DIR, FRAME_SAMPLE_RATE, write_corrupt_video
from vivit_batch.demo.run import TIMELINE_PHASES
from vivit_batch.demo.synthetic import write_timeline_video
from vivit_batch.errors import ConfigError
from vivit_batch.job import prepare_job
from vivit_batch.output import Output

FPS = 24
SEGMENT = 8 * FRAME_SAMPLE_RATE
"""frames of a segment by default: the demo model's 8 frames, every 4th"""
SEGMENTS = ["--set", "sampling.temporal_views=segments"]


@pytest.fixture()
def workspace(tmp_path):
    """A video moving right for 4 s then left for 4 s (three segments each), one shorter than
    a segment, and a broken file."""
    change = write_timeline_video(tmp_path / "change.mp4", TIMELINE_PHASES, seed=2024, fps=FPS)
    short = write_timeline_video(tmp_path / "short.mp4", [("zooming out", 20)], seed=8, fps=FPS)
    write_corrupt_video(tmp_path / "broken.mp4")
    (tmp_path / "manifest.csv").write_text(
        "uri,video_id,source\nchange.mp4,change,studio\nshort.mp4,short,phone\n"
        "broken.mp4,broken,phone\n"
    )
    return tmp_path, change, short


def run(directory, *extra: str) -> int:
    return main(
        [
            "run",
            "--manifest",
            str(directory / "manifest.csv"),
            "--output",
            str(directory / "out"),
            "--model",
            str(CHECKPOINT_DIR),
            "--set",
            f"sampling.frame_sample_rate={FRAME_SAMPLE_RATE}",
            "--set",
            "decode.segments_per_chunk=2",  # a video's chunks go to inference separately
            "--set",
            "output.rows_per_file=4",
            "--set",
            "run.max_error_fraction=0.5",
            *extra,
        ]
    )


def rows_by_video(directory) -> dict[str, list[dict]]:
    table = ds.dataset(directory / "out").to_table()
    ordered = table.sort_by([("video_id", "ascending"), ("segment_index", "ascending")])
    videos: dict[str, list[dict]] = {}
    for row in ordered.to_pylist():
        videos.setdefault(row["video_id"], []).append(row)
    return videos


def test_segments_follow_the_motion_change_exactly_once(ray_cluster, workspace):
    directory, change, short = workspace
    assert run(directory, *SEGMENTS) == 0
    videos = rows_by_video(directory)
    assert sorted(videos) == ["broken", "change", "short"]

    segments = videos["change"]
    assert [r["segment_index"] for r in segments] == list(range(6))
    bounds = [(r["segment_start_s"], r["segment_end_s"]) for r in segments]
    expected = [(i * SEGMENT / FPS, (i + 1) * SEGMENT / FPS) for i in range(6)]
    np.testing.assert_allclose(bounds, expected)  # contiguous, in order
    assert bounds[-1][1] == pytest.approx(change.num_frames / FPS)  # covers the video
    assert [r["label"] for r in segments] == ["moving right"] * 3 + ["moving left"] * 3
    assert {(round(r["duration_s"], 3), r["num_frames"], r["source"]) for r in segments} == {
        (8.0, 192, "studio")  # the video's metadata and manifest columns on every segment
    }
    [one] = videos["short"]
    assert (one["segment_index"], one["segment_start_s"]) == (0, 0.0)
    assert one["segment_end_s"] == pytest.approx(short.num_frames / FPS)
    [broken] = videos["broken"]
    assert broken["status"] == "error" and broken["segment_index"] is None

    report = Output(str(directory / "out")).read_reports()[-1]
    assert (report.rows_written, report.videos_written) == (8, 3)
    files = list((directory / "out").glob("*.parquet"))
    assert len(files) == 3  # change (6 rows) alone; no file holds part of a video

    assert run(directory, *SEGMENTS) == 0
    assert Output(str(directory / "out")).read_reports()[-1].rows_written == 0
    assert rows_by_video(directory) == videos

    parts = ["--set", "run.videos_per_part=2"]  # in two parts: whole videos in each
    assert run(directory, *SEGMENTS, "--force", *parts) == 0
    relabelled = rows_by_video(directory)
    assert {k: len(v) for k, v in relabelled.items()} == {"broken": 1, "change": 6, "short": 1}
    assert len({r["run_id"] for rows in relabelled.values() for r in rows}) == 1

    per_video = load_config(
        None,
        [f"sampling.frame_sample_rate={FRAME_SAMPLE_RATE}"],
        manifest_uri=str(directory / "manifest.csv"),
        output_uri=str(directory / "out"),
        model_source=str(CHECKPOINT_DIR),
    )
    with pytest.raises(ConfigError, match="sampling"):
        prepare_job(per_video)
