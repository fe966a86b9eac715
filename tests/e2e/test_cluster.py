"""The job on real clusters: `ray job submit` to a `ray start` head, a CPU + GPU two-node
cluster where each actor pool lands on the node it should, and a node that joins a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import RAY
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cluster")
    make_checkpoint(directory / "checkpoint")
    for i in range(3):
        write_video(directory / f"v{i}.mp4", num_frames=20 + i, content="detailed")
    (directory / "manifest.txt").write_text("v0.mp4\nv1.mp4\nv2.mp4\n")
    return directory


def submit(
    dashboard_url: str, *entrypoint: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`ray job submit [OPTIONS]`, retried while the head's job agent is still starting (Ray
    answers "No available agent ... try again later" then)."""
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        dashboard_url,
        "--working-dir",
        str(ROOT),
        *options,
        "--",
        *entrypoint,
    ]
    deadline = time.time() + 180
    while True:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if "No available agent" not in result.stderr or time.time() > deadline:
            return result
        time.sleep(3)


def test_ray_job_submit_runs_the_job_on_the_cluster(ray_cluster, tmp_path, job_inputs):
    output = tmp_path / "out"
    result = submit(
        ray_cluster.dashboard_url,
        sys.executable,
        "jobs/label_videos.py",
        "--manifest",
        str(job_inputs / "manifest.txt"),
        "--output",
        str(output),
        "--model",
        str(job_inputs / "checkpoint"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = ds.dataset(output).to_table()
    assert sorted(table.column("uri").to_pylist()) == [
        str(job_inputs / f"v{i}.mp4") for i in range(3)
    ]
    assert set(table.column("status").to_pylist()) == {"ok"}


@pytest.mark.slow
def test_ray_job_stop_ends_the_run_with_its_lock_released_and_its_report(
    ray_cluster, tmp_path, job_inputs
):
    """`ray job stop` sends SIGTERM to the job's entrypoint and every process it started, and
    SIGKILL 3 s later: within that time the run has said what it committed (in its JSON log
    line's `ended` object here), written its report and released the output's lock."""
    output, manifest = tmp_path / "out", tmp_path / "long.csv"
    rows = [f"{job_inputs}/v{i % 3}.mp4,copy{i}" for i in range(6000)]
    manifest.write_text("uri,video_id\n" + "\n".join(rows) + "\n")
    job_id = f"stopped-{time.time_ns()}"
    arguments = ["--log-format", "json", "--manifest", str(manifest), "--output", str(output)]
    arguments += ["--model", str(job_inputs / "checkpoint"), "--set", "output.rows_per_file=50"]
    options = ("--no-wait", "--submission-id", job_id)
    submitted = submit(
        ray_cluster.dashboard_url,
        sys.executable,
        "jobs/label_videos.py",
        *arguments,
        options=options,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    deadline = time.time() + 300
    while not list(output.glob("*.parquet")):
        assert time.time() < deadline, "no file committed"
        time.sleep(0.2)
    job_command(ray_cluster.dashboard_url, "stop", job_id)
    logs = job_command(ray_cluster.dashboard_url, "logs", job_id)
    committed = len(ds.dataset(output).to_table(columns=["video_id"]))
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    [ended] = [line["ended"] for line in lines if "ended" in line]
    assert ended["by"] == "SIGTERM" and ended["videos_committed"] == committed, logs[-3000:]
    assert ended["files_committed"] == len(list(output.glob("*.parquet")))
    assert 0 < committed < len(rows)
    assert json.loads((output / "_lock.json").read_text())["state"] == "released"
    [report] = (output / "_runs").glob("*.json")
    assert json.loads(report.read_text())["stopped_by"] == "SIGTERM"


def job_command(dashboard_url: str, command: str, job_id: str) -> str:
    """`ray job COMMAND JOB_ID`'s output (stop: once the job has stopped)."""
    address = ["--address", dashboard_url]
    done = subprocess.run(
        [RAY, "job", command, *address, job_id], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


MULTI_NODE_SCRIPT = """
import contextlib, io, json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors
from vivit_batch.cli import main

directory, output = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # a GPU to Ray; this torch has no CUDA
ray.init(address=cluster.address)
job = ["--manifest", directory + "/manifest.txt", "--output", output,
       "--model", directory + "/checkpoint", "--address", cluster.address]

def cli(*arguments):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(list(arguments))
    return {"code": code, "printed": printed.getvalue()}

def placements():
    found = {}
    for actor in list_actors(address=cluster.address, detail=True, limit=1000):
        name = actor.class_name
        if "DecodeStage" in name or "InferenceStage" in name:
            stage = "decode" if "DecodeStage" in name else "inference"
            node = "gpu" if actor.node_id == gpu_node.node_id else "cpu"
            found.setdefault(stage, set()).add(node)
    return {stage: sorted(nodes) for stage, nodes in found.items()}

outcome = {"gpu_plan": cli("run", *job), "placements": placements()}
outcome["validate"] = cli("validate", *job)
outcome["cpu_plan"] = cli("run", *job, "--set", "resources.inference_gpus=0")
def written():  # every file of the output but the lock's and staging
    kept = [p for p in Path(output).rglob("*") if p.is_file() and "_tmp" not in p.parts]
    return sorted((str(p), p.stat().st_mtime_ns) for p in kept if "_lock" not in p.name)

before = written()
outcome["forced_gpu_plan"] = cli("run", *job, "--force")
outcome["forced_changed_nothing"] = written() == before
print(json.dumps(outcome))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_gpu_plans_go_to_gpu_nodes_and_refuse_a_torch_without_cuda(tmp_path, job_inputs):
    """A CPU node and a node Ray counts one GPU on, with this machine's CPU-only torch:
    decode actors go to the CPU node and the inference actor to the GPU node, where it finds
    that torch cannot use CUDA, so the run and `validate` stop with exit code 2 before any row
    is labelled, saying so without a traceback. With resources.inference_gpus=0 the same
    cluster labels on the CPU, with the planned torch threads; a `--force` run refused then
    leaves every row as it was."""
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", MULTI_NODE_SCRIPT, str(job_inputs), str(output)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["placements"] == {"decode": ["cpu"], "inference": ["gpu"]}
    for refused in (outcome["gpu_plan"], outcome["validate"], outcome["forced_gpu_plan"]):
        assert refused["code"] == 2, refused["printed"][-3000:]
        assert "cannot use CUDA" in refused["printed"]
        assert "resources.inference_gpus=0" in refused["printed"]
        assert "torch " in refused["printed"] and "CPU-only build" in refused["printed"]
        assert "Traceback" not in refused["printed"], refused["printed"][-3000:]
    cpu_run = outcome["cpu_plan"]
    assert cpu_run["code"] == 0, cpu_run["printed"][-3000:]
    [report_file] = (output / "_runs").glob("*.json")  # the refused runs wrote nothing
    report = json.loads(report_file.read_text())
    assert ds.dataset(output).to_table()["run_id"].to_pylist() == [report["run_id"]] * 3
    assert outcome["forced_changed_nothing"]
    assert report["resources"]["inference_gpus"] == 0
    [device] = report["inference_devices"]
    assert device["device"] == "cpu"
    assert device["threads"] == report["resources"]["inference_threads"] == 1  # tiny: decoding


@pytest.mark.slow
@pytest.mark.parametrize(
    ("machine", "code"),
    [({"CPU": 1}, 0), ({"CPU": 2, "GPU": 1}, 2)],
    ids=["one-cpu", "two-cpus-and-a-gpu"],
)
def test_the_command_on_a_small_machine_runs_to_its_end(tmp_path, job_inputs, machine, code):
    """`vivit-batch run` with its own local Ray on a machine of one CPU, or of two CPUs and a
    GPU (the resources Ray counts, from RAY_OVERRIDE_RESOURCES; this torch has no CUDA). Where
    the pools' shares held part of the one whole CPU that Ray Data's own tasks need, both
    waited for ever. One CPU labels every video; on the other, the GPU's inference actor
    refuses this torch: exit code 2, with the refusal as the run's one error line."""
    output = tmp_path / "out"
    environment = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps(machine)}
    environment.pop("RAY_ADDRESS", None)
    arguments = ["--manifest", str(job_inputs / "manifest.txt"), "--output", str(output)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vivit_batch.cli",
            "run",
            *arguments,
            "--model",
            str(job_inputs / "checkpoint"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=ROOT,
    )
    assert result.returncode == code, result.stderr[-3000:]
    if code == 0:
        assert ds.dataset(output).to_table()["status"].to_pylist() == ["ok"] * 3
        return
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "cannot use CUDA" in errors[0] and "resources.inference_gpus=0" in errors[0]
    assert not list(output.rglob("*.parquet"))


AUTOSCALING_SCRIPT = """
import json, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors
from tests.helpers.http import LocalHTTPServer, QuietHandler
from vivit_batch import job
from vivit_batch.config import load_config

directory, output, videos = Path(sys.argv[1]), sys.argv[2], 8
release = threading.Event()

class HeldUntilReleased(QuietHandler):  # HEAD at once; GET (decoding) waits for `release`
    data = (directory / "v0.mp4").read_bytes()

    def do_GET(self):
        release.wait(150)
        super().do_GET()

server = LocalHTTPServer(HeldUntilReleased)
manifest = Path(output + "-manifest.txt")
manifest.write_text("".join(f"{server.url}/v{i}.mp4\\n" for i in range(videos)))
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
job.connect(cluster.address)
config = load_config(None, [
    "manifest.allow_http=true", f"manifest.http_allow_hosts={server.host}",
    "decode.stall_timeout_s=120", "resources.decode_batch_size=1",
    "resources.max_decode_actors=4", "resources.max_inference_actors=2",
], manifest_uri=str(manifest), output_uri=output, model_source=str(directory / "checkpoint"))
reports = []
run = threading.Thread(target=lambda: reports.append(job.run_job(job.prepare_job(config))))
started = time.time()
run.start()

def decode_actor_nodes():
    try:
        actors = list_actors(address=cluster.address, detail=True, limit=1000)
    except ConnectionError:  # the dashboard, which answers, is still starting
        return set()
    return {a.node_id for a in actors if "DecodeStage" in a.class_name}

def wait_for(condition, seconds):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.5)
    return condition()

try:
    wait_for(decode_actor_nodes, 60)  # the run's pools are up
    joined = cluster.add_node(num_cpus=4)  # ray.cluster_utils adds nodes in the main thread
    added = time.time()
    used = wait_for(lambda: joined.node_id in decode_actor_nodes(), 60)
    waited = time.time() - added
finally:
    release.set()
run.join()
[report] = reports
print(json.dumps({"used_new_node": used, "waited_s": round(waited, 1),
                  "rows": report.rows_written,
                  "status": report.counts["status"], "resources": report.resources}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("VIVIT_BATCH_AUTOSCALING_TEST"),
    reason="2-3 minutes on 2 cores (Ray Data sees a new node on its coordinator's 20 s tick): "
    "set VIVIT_BATCH_AUTOSCALING_TEST=1",
)
def test_a_node_that_joins_during_the_run_gets_decode_actors(tmp_path, job_inputs):
    """A one-node cluster (2 CPUs) starts a run whose videos come from a server that holds
    every GET until it is told: the decode actors stay busy, so Ray Data grows the pool (1 to
    `resources.max_decode_actors`) onto a 4-CPU node added once the run is going. The server
    lets the videos through once a decode actor is up on the new node (or after 60 s)."""
    result = subprocess.run(
        [sys.executable, "-c", AUTOSCALING_SCRIPT, str(job_inputs), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["used_new_node"], outcome
    assert outcome["rows"] == 8 and outcome["status"] == {"ok": 8}
    planned = outcome["resources"]
    assert (planned["decode_actors"], planned["max_decode_actors"]) == (1, 4)
