"""`vivit-batch relabel` end to end: relabelling with a head and `run --model HEAD` agree, and the
run joins the relabelled output."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pyarrow.dataset as ds

from tests.helpers.relabelling import by_video, relabel
from vivit_batch.cli import main
from vivit_batch.fingerprint import fingerprint


def test_relabel_and_run_with_the_head_agree_and_the_run_joins_the_relabelled_output(
    ray_cluster, motion_output, motion_head, tmp_path
):
    """One view per video: the head's labels and scores from the stored embeddings are those of
    labelling the videos again with `run --model HEAD`, which the relabelled output accepts."""
    output = shutil.copytree(motion_output.output, tmp_path / "out")
    assert relabel(output, motion_head) == 0
    relabelled = by_video(ds.dataset(output).to_table()).to_pandas().set_index("video_id")
    with open(motion_output.manifest, newline="") as stream:
        rows = list(csv.DictReader(stream))[::4]  # 28 of the 112 videos, every motion
    manifest = tmp_path / "some.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = [f"--set={setting}" for setting in motion_output.settings]
    arguments = ["--manifest", str(manifest), "--output", str(output), "--model", str(motion_head)]
    assert main(["run", *arguments, *settings, "--force"]) == 0
    rerun = by_video(ds.dataset(output).to_table()).to_pandas().set_index("video_id")
    assert len(rerun) == len(relabelled)  # one row per video still
    head_sha256 = fingerprint((motion_head / "model.safetensors",))
    labelled = rerun[rerun.model_sha256 == head_sha256]
    assert sorted(labelled.index) == sorted(row["video_id"] for row in rows)
    expected = relabelled.loc[labelled.index]
    assert labelled.label.tolist() == expected.label.tolist()
    assert [list(ids) for ids in labelled.topk_ids] == [list(ids) for ids in expected.topk_ids]
    np.testing.assert_allclose(
        np.stack(labelled.topk_scores), np.stack(expected.topk_scores), atol=1e-4
    )
