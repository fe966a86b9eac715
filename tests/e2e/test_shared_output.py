"""A local output on a multi-node cluster is checked from every node before any work.

The simulated cluster is two real Ray nodes on this machine (`ray.cluster_utils.Cluster`, in a
process of its own: the test session's Ray is another cluster), so they share one filesystem.
The output is named `/proc/self/cwd/out`, which each process resolves in its own working
folder, and the second node is started from another folder, which its workers inherit: the
same path is then a different folder on each node, as node-local storage is. Everything from
`vivit-batch run` to the check's Ray tasks is the production code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vivit_batch.job.shared_output import require_shared_output
from vivit_batch.output import Output
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video

ROOT = Path(__file__).resolve().parents[2]

TWO_NODES = """
import json, os, sys
import ray
from ray.cluster_utils import Cluster
from vivit_batch.cli import main
from vivit_batch.job.shared_output import require_shared_output
from vivit_batch.output import Output

here, elsewhere, shared, *arguments = sys.argv[1:]
os.chdir(here)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
os.chdir(elsewhere)  # the second node's processes, its workers among them, work in `elsewhere`
second = cluster.add_node(num_cpus=1)
os.chdir(here)
try:
    code = main([*arguments, "--address", cluster.address])
    require_shared_output(Output(shared), "shared")  # one folder for both nodes: accepted
    print(json.dumps({"code": code, "head": cluster.head_node.node_id, "second": second.node_id}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow  # two Ray nodes start: about 20 s
def test_a_two_node_cluster_with_a_node_local_output_is_refused_before_any_work(tmp_path):
    here, elsewhere, shared = tmp_path / "driver", tmp_path / "second-node", tmp_path / "shared"
    for folder in (here, elsewhere, shared):
        folder.mkdir()
    make_checkpoint(tmp_path / "ckpt")
    write_video(tmp_path / "v.mp4", num_frames=8)
    (tmp_path / "manifest.txt").write_text(f"{tmp_path / 'v.mp4'}\n")
    run = ["run", "--manifest", str(tmp_path / "manifest.txt"), "--output", "/proc/self/cwd/out"]
    run += ["--model", str(tmp_path / "ckpt")]
    for setting in ("decode_actors=1", "inference_actors=1", "inference_cpus=1"):
        run += ["--set", f"resources.{setting}"]  # no calibration: nothing that is not needed
    finished = subprocess.run(
        [sys.executable, "-c", TWO_NODES, str(here), str(elsewhere), str(shared), *run],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert result["code"] == 2
    (refusal,) = [line for line in finished.stderr.splitlines() if "not every node" in line]
    assert f"node {result['second']}" in refusal and result["head"] not in refusal
    assert "every node shares" in refusal and "or on S3" in refusal
    output = here / "out"
    assert json.loads((output / "_lock.json").read_text())["state"] == "released"
    assert sorted(p.name for p in output.iterdir()) == ["_lock.guard", "_lock.json", "_tmp"]
    assert not list((output / "_tmp").iterdir())  # the marker and its folder removed
    assert not (elsewhere / "out").exists()


def test_a_single_node_cluster_is_not_checked(ray_cluster, tmp_path):
    """One node: nothing written, no task started."""
    output = Output(str(tmp_path / "out"))
    require_shared_output(output, "run")
    assert not os.path.exists(output.root)
