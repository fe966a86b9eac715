"""Re-running into the same output: only new work is done, nothing is written twice, and one
output holds rows of one model only."""

from __future__ import annotations

import json
import os
import shutil
import time

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from tests.checkpoints import make_checkpoint
from tests.media import write_video
from vivit_batch.cli import main


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


def last_report(workspace) -> dict:
    reports = sorted((workspace / "out" / "_runs").glob("*.json"))
    return json.loads(reports[-1].read_text())


def rows(workspace) -> dict[str, dict]:
    table = ds.dataset(workspace / "out").to_table()
    ids = table.column("video_id").to_pylist()
    assert len(ids) == len(set(ids)), "a video appears twice"
    return {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}


def test_rerun_labels_only_new_videos(ray_cluster, workspace):
    assert run(workspace, ["a", "b", "broken"]) == 0
    first = rows(workspace)
    assert run(workspace, ["a", "b", "broken", "c"]) == 0
    report = last_report(workspace)
    assert (report["rows_written"], report["skipped_committed"]) == (1, 3)
    after = rows(workspace)
    assert set(after) == {"a.mp4", "b.mp4", "broken.mp4", "c.mp4"}
    assert after["a.mp4"]["run_id"] == first["a.mp4"]["run_id"]  # untouched


def test_rerun_errors_relabels_only_the_failed_rows(ray_cluster, workspace):
    assert run(workspace, ["a", "broken"]) == 0
    assert rows(workspace)["broken.mp4"]["error_code"] == "unreadable"
    shutil.copy(workspace / "b.mp4", workspace / "broken.mp4")  # the upload was fixed
    assert run(workspace, ["a", "broken"], "--rerun-errors") == 0
    report = last_report(workspace)
    assert (report["rows_written"], report["rows_replaced"]) == (1, 1)
    assert rows(workspace)["broken.mp4"]["status"] == "ok"


def test_force_relabels_everything_once(ray_cluster, workspace):
    assert run(workspace, ["a", "b"]) == 0
    first = rows(workspace)
    assert run(workspace, ["a", "b"], "--force") == 0
    assert last_report(workspace)["rows_written"] == 2
    after = rows(workspace)
    assert len(after) == 2
    assert after["a.mp4"]["run_id"] != first["a.mp4"]["run_id"]
    assert after["a.mp4"]["label"] == first["a.mp4"]["label"]


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
    [archive] = (workspace / "out" / "_versions").iterdir()
    assert archive.name.startswith(old_sha[:12])
    assert ds.dataset(archive).to_table().column("video_id").to_pylist() == [
        rows_before["a.mp4"]["video_id"]
    ]
    assert json.loads((archive / "_dataset.json").read_text())["weights_sha256"] == old_sha
    assert run(workspace, ["a", "b"], model="other") == 0  # the new version is the output now


def write_lock(workspace, heartbeat: float) -> None:
    (workspace / "out").mkdir(exist_ok=True)
    (workspace / "out" / "_lock.json").write_text(
        json.dumps({"run_id": "other-run", "host": "elsewhere", "pid": 1, "heartbeat": heartbeat})
    )


def test_a_live_run_holding_the_output_refuses_a_second(ray_cluster, workspace, capsys):
    write_lock(workspace, heartbeat=time.time())
    assert run(workspace, ["a"]) == 2
    assert "is being written by run other-run" in capsys.readouterr().err
    assert not list((workspace / "out").glob("*.parquet"))


def test_a_dead_runs_lock_is_taken_over(ray_cluster, workspace):
    write_lock(workspace, heartbeat=time.time() - 3600)
    assert run(workspace, ["a"]) == 0
    assert len(rows(workspace)) == 1
    assert not (workspace / "out" / "_lock.json").exists()


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
    )
    lock = workspace / "out" / "_lock.json"
    deadline = time.time() + 300
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert run(workspace, ["a", "b", "c"]) == 2
    assert "is being written by run" in capsys.readouterr().err
    assert first.wait(timeout=600) == 0
    assert len(rows(workspace)) == 3


def test_refresh_changed_relabels_only_replaced_videos(ray_cluster, workspace):
    assert run(workspace, ["a", "b", "c"]) == 0
    first = rows(workspace)
    assert first["a.mp4"]["source_size"] == (workspace / "a.mp4").stat().st_size
    write_video(workspace / "a.mp4", num_frames=28, content="detailed")  # re-uploaded, new size
    stamp = (workspace / "b.mp4").stat().st_mtime + 60
    os.utime(workspace / "b.mp4", (stamp, stamp))  # rewritten in place, same size
    assert run(workspace, ["a", "b", "c"]) == 0
    assert last_report(workspace)["rows_written"] == 0  # not asked to look

    assert run(workspace, ["a", "b", "c"], "--refresh-changed") == 0
    report = last_report(workspace)
    assert (report["rows_written"], report["rows_replaced"]) == (2, 2)
    after = rows(workspace)
    assert after["a.mp4"]["num_frames"] == 28 and after["a.mp4"]["run_id"] == report["run_id"]
    assert after["b.mp4"]["run_id"] == report["run_id"]
    assert after["b.mp4"]["source_modified"].timestamp() == pytest.approx(stamp, abs=1e-3)
    assert after["c.mp4"]["run_id"] == first["c.mp4"]["run_id"]
    assert run(workspace, ["a", "b", "c"], "--refresh-changed") == 0
    assert last_report(workspace)["rows_written"] == 0  # nothing changed since


def test_partition_by_run_date(ray_cluster, workspace, capsys):
    assert run(workspace, ["a", "broken"], "--set", "output.partition_by=run_date") == 0
    report = last_report(workspace)
    run_date = report["started_at"][:10]
    assert [p.name for p in (workspace / "out").glob("run_date=*")] == [f"run_date={run_date}"]
    shutil.copy(workspace / "b.mp4", workspace / "broken.mp4")
    extra = ["--rerun-errors", "--set", "output.partition_by=run_date"]
    assert run(workspace, ["a", "broken", "c"], *extra) == 0
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
