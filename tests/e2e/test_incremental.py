"""Re-running into the same output: only new work is done, nothing is written twice, and one
output holds rows of one model only."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from vivit_batch.cli import main
from vivit_batch.config import load_config
from vivit_batch.job import (
    cluster_shape,
    inference_options,
    plan_resources,
    prepare_job,
    run_job,
)
from vivit_batch.output import Output, RunReport
from vivit_batch.stages.inference import CheckpointChanged
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video


@pytest.fixture()
def workspace(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    for name in ("a", "b", "c"):
        write_video(tmp_path / f"{name}.mp4", num_frames=20, content="detailed")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    return tmp_path


def run(workspace, names, *extra, model="ckpt"):
    manifest = workspace / "manifest.txt"
    manifest.write_text("".join(f"{n}.mp4\n" for n in names))
    return main(
        [
            "run",
            "--manifest",
            str(manifest),
            "--output",
            str(workspace / "out"),
            "--model",
            str(workspace / model),
            "--set",
            "run.max_error_fraction=1",
            *extra,
        ]
    )


def last_report(workspace) -> RunReport:
    return Output(str(workspace / "out")).read_reports()[-1]  # run ids sort by time


def rows(workspace) -> dict[str, dict]:
    table = ds.dataset(workspace / "out").to_table()
    ids = table.column("video_id").to_pylist()
    assert len(ids) == len(set(ids)), "a video appears twice"
    return {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}


def test_rerun_labels_only_new_videos_and_force_relabels_everything_once(ray_cluster, workspace):
    assert run(workspace, ["a", "b", "broken"]) == 0
    first = rows(workspace)
    assert run(workspace, ["a", "b", "broken", "c"]) == 0
    report = last_report(workspace)
    assert (report.rows_written, report.skipped_committed) == (1, 3)
    after = rows(workspace)
    assert set(after) == {"a.mp4", "b.mp4", "broken.mp4", "c.mp4"}
    assert after["a.mp4"]["run_id"] == first["a.mp4"]["run_id"]  # untouched

    assert run(workspace, ["a", "b"], "--force") == 0
    report = last_report(workspace)
    assert (report.rows_written, report.rows_replaced) == (2, 2)
    forced = rows(workspace)
    assert len(forced) == 4  # relabelled once each; the others stay
    assert forced["a.mp4"]["run_id"] == report.run_id != first["a.mp4"]["run_id"]
    assert forced["a.mp4"]["label"] == first["a.mp4"]["label"]
    assert forced["c.mp4"]["run_id"] == after["c.mp4"]["run_id"]


def test_another_model_is_refused_unless_it_starts_a_new_version(ray_cluster, workspace, capsys):
    assert run(workspace, ["a"]) == 0
    rows_before = rows(workspace)
    make_checkpoint(workspace / "other", seed=1)
    assert run(workspace, ["a", "b"], model="other") == 2
    message = capsys.readouterr().err
    assert "weights_sha256" in message and "new output" in message and "--new-version" in message
    assert len(rows(workspace)) == 1

    old_sha = rows(workspace)["a.mp4"]["model_sha256"]
    assert run(workspace, ["a", "b"], "--new-version", model="other") == 0
    current = rows(workspace)
    assert set(current) == {"a.mp4", "b.mp4"}
    assert {r["model_sha256"] for r in current.values()} != {old_sha}
    assert len({r["model_sha256"] for r in current.values()}) == 1
    # Every reader sees the current version only, one row per video.
    ids = sorted(r["video_id"] for r in current.values())
    files = f"{workspace}/out/**/*.parquet"
    assert (
        sorted(duckdb.sql(f"select video_id from read_parquet('{files}')").fetchnumpy()["video_id"])
        == ids
    )
    assert sorted(pd.read_parquet(workspace / "out").video_id) == ids
    # The archived version, read as the README says.
    [archive] = (workspace / "out" / "_versions").iterdir()
    assert archive.name.startswith(old_sha[:12])
    old_ids = [rows_before["a.mp4"]["video_id"]]
    assert ds.dataset(archive, format="parquet").to_table()["video_id"].to_pylist() == old_ids
    archived = f"{archive}/**/*.parquet.archived"
    assert duckdb.sql(f"select video_id from read_parquet('{archived}')").fetchall() == [
        (old_ids[0],)
    ]
    assert json.loads((archive / "_dataset.json").read_text())["weights_sha256"] == old_sha
    assert run(workspace, ["a", "b"], model="other") == 0  # the new version is the output now


def test_two_runs_at_once_never_both_commit(ray_cluster, workspace, capsys):
    manifest = workspace / "all.txt"
    manifest.write_text("a.mp4\nb.mp4\nc.mp4\n")
    first = ray_cluster.start_run(
        "--manifest",
        str(manifest),
        "--output",
        str(workspace / "out"),
        "--model",
        str(workspace / "ckpt"),
        "--set",
        "run.lock_stale_after_s=8",  # renewed every 2 s: the second run sees it alive soon
    )
    lock = workspace / "out" / "_lock.json"
    deadline = time.time() + 300
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert run(workspace, ["a", "b", "c"]) == 2
    assert "is being written by run" in capsys.readouterr().err
    assert first.wait(timeout=600) == 0
    assert len(rows(workspace)) == 3


def test_refresh_changed_relabels_only_replaced_videos(ray_cluster, workspace, capsys):
    """Also: a run with nothing to label starts no actor."""
    assert run(workspace, ["a", "b", "c"]) == 0
    first = rows(workspace)
    assert first["a.mp4"]["source_size"] == (workspace / "a.mp4").stat().st_size
    write_video(workspace / "a.mp4", num_frames=28, content="detailed")  # re-uploaded, new size
    stamp = (workspace / "b.mp4").stat().st_mtime + 60
    os.utime(workspace / "b.mp4", (stamp, stamp))  # rewritten in place, same size
    actors = stage_actors(ray_cluster)
    capsys.readouterr()
    assert run(workspace, ["a", "b", "c"]) == 0
    assert last_report(workspace).rows_written == 0  # not asked to look
    assert "0 of the manifest's 3 videos to label; no actor to start" in capsys.readouterr().err
    assert stage_actors(ray_cluster) == actors

    assert run(workspace, ["a", "b", "c"], "--refresh-changed") == 0
    report = last_report(workspace)
    assert (report.rows_written, report.rows_replaced) == (2, 2)
    after = rows(workspace)
    assert after["a.mp4"]["num_frames"] == 28 and after["a.mp4"]["run_id"] == report.run_id
    assert after["b.mp4"]["run_id"] == report.run_id
    assert after["b.mp4"]["source_modified"].timestamp() == pytest.approx(stamp, abs=1e-3)
    assert after["c.mp4"]["run_id"] == first["c.mp4"]["run_id"]
    assert run(workspace, ["a", "b", "c"], "--refresh-changed") == 0
    assert last_report(workspace).rows_written == 0  # nothing changed since


def stage_actors(ray_cluster) -> int:
    """The decode and inference actors the cluster has started, alive or ended."""
    from ray.util.state import list_actors

    found = list_actors(address=ray_cluster.dashboard_url, limit=10_000)
    return sum("DecodeStage" in a.class_name or "InferenceStage" in a.class_name for a in found)


def test_partition_by_run_date(ray_cluster, workspace, capsys):
    assert run(workspace, ["a", "broken"], "--set", "output.partition_by=run_date") == 0
    report = last_report(workspace)
    run_date = report.started_at[:10]
    assert [p.name for p in (workspace / "out").glob("run_date=*")] == [f"run_date={run_date}"]
    shutil.copy(workspace / "b.mp4", workspace / "broken.mp4")
    extra = ["--rerun-errors", "--set", "output.partition_by=run_date"]
    compact = ["--set", "output.compact_after_files=1"]
    assert run(workspace, ["a", "broken", "c"], *extra, *compact) == 0
    # the run's folder held the first run's files and c's: more than 1 small file, so merged
    [merged] = (workspace / "out").glob("run_date=*/*.parquet")
    assert merged.name.startswith(f"part-{last_report(workspace).run_id}-")
    found = rows(workspace)  # pyarrow with no options: run_date is a column of the files
    assert {r["run_date"] for r in found.values()} == {run_date}
    assert found["broken.mp4"]["status"] == "ok"
    frame = pd.read_parquet(workspace / "out")  # pandas reads the folders as hive partitions
    assert sorted(frame.video_id) == sorted(r["video_id"] for r in found.values())
    files = f"{workspace}/out/**/*.parquet"
    query = f"select run_date, count(*) from read_parquet('{files}') group by 1"
    [(day, count)] = duckdb.sql(query).fetchall()  # DuckDB reads the folders' dates as DATE
    assert (str(day), count) == (run_date, 3)

    assert run(workspace, ["a"]) == 2  # the layout of an output does not change
    assert "partition_by" in capsys.readouterr().err


def test_a_rerun_after_too_many_errors_fails_again_until_they_are_relabelled(
    ray_cluster, workspace
):
    budget = ["--set", "run.max_error_fraction=0.4"]
    assert run(workspace, ["a", "broken"], *budget) == 3
    assert run(workspace, ["a", "broken"], *budget) == 3  # nothing fixed, nothing to do: still 3
    report = last_report(workspace)
    assert report.rows_written == 0
    assert (report.error_budget.errors_kept, report.error_budget.exceeded) == (1, True)
    shutil.copy(workspace / "b.mp4", workspace / "broken.mp4")  # fixed, but not relabelled
    assert run(workspace, ["a", "broken"], *budget) == 3
    assert rows(workspace)["broken.mp4"]["error_code"] == "unreadable"
    assert run(workspace, ["a", "broken"], "--rerun-errors", *budget) == 0
    report = last_report(workspace)
    assert (report.rows_written, report.rows_replaced) == (1, 1)  # only the failed row
    assert report.error_budget.error_fraction == 0
    assert rows(workspace)["broken.mp4"]["status"] == "ok"


def test_a_checkpoint_changed_after_the_driver_checked_it_fails_before_writing(
    ray_cluster, workspace
):
    manifest = workspace / "manifest.txt"
    manifest.write_text("a.mp4\nb.mp4\n")
    config = load_config(
        manifest_uri=str(manifest),
        output_uri=str(workspace / "out"),
        model_source=str(workspace / "ckpt"),
    )
    job = prepare_job(config)
    pinned = replace(job, checkpoint=replace(job.checkpoint, commit="c" * 40))
    settings = inference_options(pinned, "run", plan_resources(config, cluster_shape()))
    assert settings.revision == "c" * 40  # what every inference actor loads
    make_checkpoint(workspace / "ckpt", seed=1)  # replaced in place after the driver's check
    with pytest.raises(CheckpointChanged, match="changed after the run started"):
        run_job(job)
    assert not list((workspace / "out").rglob("*.parquet"))
