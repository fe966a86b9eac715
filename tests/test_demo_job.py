"""`vivit-batch demo`: the full job (Ray, Parquet) labels freshly generated held-out clips with
the shipped demo model, and gets them right."""

from __future__ import annotations

import pyarrow.dataset as ds

from vivit_batch.cli import main
from vivit_batch.demo import MOTION_CLASSES

HELD_OUT_SEED = 424242  # the training script never uses it


def test_demo_labels_held_out_clips_correctly(ray_cluster, tmp_path, capsys):
    assert (
        main(["demo", "--dir", str(tmp_path), "--videos", "28", "--seed", str(HELD_OUT_SEED)]) == 0
    )
    rows = ds.dataset(tmp_path / "output").to_table().to_pylist()
    assert len(rows) == 29
    [corrupt] = [r for r in rows if r["video_id"] == "corrupt_000"]
    assert corrupt["status"] == "error" and corrupt["error_code"] == "unreadable"
    labelled = [r for r in rows if r["status"] == "ok"]
    assert len(labelled) == 28
    assert {r["label"] for r in labelled} <= set(MOTION_CLASSES)
    accuracy = sum(r["label"] == r["true_label"] for r in labelled) / len(labelled)
    assert accuracy >= 0.95
    assert f"accuracy: {sum(r['label'] == r['true_label'] for r in labelled)}/28" in (
        capsys.readouterr().out
    )
