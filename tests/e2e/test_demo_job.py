"""`vivit-batch demo` end to end: the full job (Ray, Parquet) labels freshly generated held-out
clips with the shipped demo model, and gets them right."""

from __future__ import annotations

import pyarrow.dataset as ds

from vivit_batch.cli import main
from vivit_batch.demo import MOTION_CLASSES
from vivit_batch.demo.run import MOTION_GROUPS

HELD_OUT_SEED = 424242  # the training script never uses it


def test_demo_labels_held_out_clips_correctly(ray_cluster, tmp_path, capsys):
    assert (
        main(["demo", "--dir", str(tmp_path), "--videos", "28", "--seed", str(HELD_OUT_SEED)]) == 0
    )
    [first_version] = (tmp_path / "output" / "_versions").iterdir()  # before the relabel
    rows = ds.dataset(first_version, format="parquet").to_table().to_pylist()
    assert len(rows) == 29
    [corrupt] = [r for r in rows if r["video_id"] == "corrupt_000"]
    assert corrupt["status"] == "error" and corrupt["error_code"] == "unreadable"
    labelled = [r for r in rows if r["status"] == "ok"]
    assert len(labelled) == 28
    assert {r["label"] for r in labelled} <= set(MOTION_CLASSES)
    accuracy = sum(r["label"] == r["true_label"] for r in labelled) / len(labelled)
    assert accuracy >= 0.95
    printed = capsys.readouterr().out
    assert f"accuracy: {sum(r['label'] == r['true_label'] for r in labelled)}/28" in printed
    # the closed loop: 21 hand labels, the output relabelled with the groups, the 7 others right
    relabelled = ds.dataset(tmp_path / "output").to_table().to_pylist()
    others = [r for r in relabelled if r["status"] == "ok" and not r["hand_label"]]
    assert len(others) == 7 and {r["true_label"] for r in others} == set(MOTION_CLASSES)
    right = sum(r["label"] == MOTION_GROUPS[r["true_label"]] for r in others)
    assert right >= 6
    assert "a head trained on the column hand_label of 21 videos" in printed
    assert f"on the 7 videos without a hand label: {right}/7" in printed
    assert (tmp_path / "head" / "training.json").is_file()
    # then the video whose motion changes, segment by segment
    segments = ds.dataset(tmp_path / "segments_output").to_table().sort_by("segment_index")
    assert segments["segment_index"].to_pylist() == list(range(6))
    assert segments["label"].to_pylist() == ["moving right"] * 3 + ["moving left"] * 3
    assert "timeline of timeline_000 (true: moving right 0.0-4.0 s, moving left 4.0-8.0 s)" in (
        printed
    )
    assert "  4.0-5.3 s  moving left" in printed
