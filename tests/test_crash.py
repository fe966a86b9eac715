"""A driver killed with SIGKILL mid-run leaves a readable output, and the rerun completes it with
exactly one row per manifest entry, keeping the rows committed before the crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest

from tests.checkpoints import make_checkpoint
from tests.media import write_video

VIDEOS = 10


@pytest.fixture()
def job(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    for i in range(VIDEOS):
        write_video(tmp_path / f"v{i}.mp4", num_frames=20 + i, content="detailed")
    (tmp_path / "manifest.txt").write_text("".join(f"v{i}.mp4\n" for i in range(VIDEOS)))
    return tmp_path


def start_run(job, ray_cluster) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "vivit_batch.cli",
        "run",
        "--manifest",
        str(job / "manifest.txt"),
        "--output",
        str(job / "out"),
        "--model",
        str(job / "ckpt"),
        "--set",
        "resources.batch_size=1",
        "--set",
        "resources.decode_batch_size=1",
        "--set",
        "output.rows_per_file=1",
    ]
    return subprocess.Popen(
        command,
        env={**os.environ, "RAY_ADDRESS": ray_cluster.address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def committed(job) -> list[dict]:
    """The output as a reader sees it; fails if any file is partial or a row is doubled."""
    if not (job / "out").exists():
        return []
    rows = ds.dataset(job / "out").to_table().to_pylist()
    ids = [r["video_id"] for r in rows]
    assert len(ids) == len(set(ids))
    return rows


def wait_for_files(job, count: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((job / "out").glob("*.parquet"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} committed files within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_files", [0, 3])
def test_sigkill_then_rerun_gives_exactly_one_row_each(ray_cluster, job, kill_after_files):
    process = start_run(job, ray_cluster)
    if kill_after_files:
        wait_for_files(job, kill_after_files)
    else:
        time.sleep(4)  # starting up: model loading, manifest scan
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {r["video_id"]: r for r in committed(job)}
    assert len(before) >= kill_after_files

    rerun = start_run(job, ray_cluster)
    assert rerun.wait(timeout=600) == 0
    after = {r["video_id"]: r for r in committed(job)}
    assert len(after) == VIDEOS
    for video_id, row in before.items():
        assert after[video_id]["run_id"] == row["run_id"]
        assert after[video_id]["label"] == row["label"]


def inference_actor_pids(ray_cluster) -> list[int]:
    from ray.util.state import list_actors

    return [
        actor.pid
        for actor in list_actors(detail=True, limit=1000)
        if "InferenceStage" in actor.class_name and actor.state == "ALIVE"
    ]


@pytest.mark.slow
def test_killed_inference_actor_is_replaced_and_nothing_is_lost(ray_cluster, job):
    process = start_run(job, ray_cluster)
    deadline = time.time() + 300
    while not (pids := inference_actor_pids(ray_cluster)) and time.time() < deadline:
        time.sleep(0.2)
    assert pids, "no live inference actor to kill"
    wait_for_files(job, 1)  # it is labelling now
    os.kill(pids[0], signal.SIGKILL)
    assert len(list((job / "out").glob("*.parquet"))) < VIDEOS, "killed too late to matter"
    assert process.wait(timeout=600) == 0
    rows = committed(job)
    assert len(rows) == VIDEOS
    assert {r["status"] for r in rows} == {"ok"}
