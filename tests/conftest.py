"""Shared fixtures: one real Ray cluster (`ray start --head`, token auth) per test session, a
moto S3 server, small checkpoints and outputs. Tests live in tests/unit (fast, no Ray) and
tests/e2e (end to end, slow); what they share is in tests/helpers."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))

# Ray 2.60 turns token auth on when a token file exists, and reads these settings when it is
# imported, so they are set here, before any test module imports ray, rather than left to
# whatever an earlier run left in ~/.ray.
_TOKEN = Path(tempfile.mkdtemp(prefix="vivit-batch-ray-")) / "auth_token"
_TOKEN.write_text(secrets.token_hex(32))
RAY_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN_PATH": str(_TOKEN),
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(RAY_ENV)
# Test S3 credentials for the moto server (tests/helpers/s3.py), exported before the Ray cluster
# starts so that its workers inherit them; nothing may ever reach real AWS.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "AKIATESTVIVITBATCH01",
        "AWS_SECRET_ACCESS_KEY": "vivit-batch-secret-never-printed-8d1f0a",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)


RAY_FREE_E2E = tuple(
    f"tests/e2e/test_{name}.py"
    for name in ("demo_model", "lock", "model", "report", "segments", "style", "video_storage")
)
"""The tests/e2e modules that start no Ray (slow for other reasons: the base-size model, the
demo training, mypy, a browser, stalled stores): on several processes they run beside the
tests that share the Ray cluster, with tests/unit. Like a unit test, a test of theirs that
starts Ray fails."""


def pytest_collection_modifyitems(items) -> None:
    """tests/e2e holds the end-to-end and slow tests, tests/unit the fast ones (no Ray; servers
    only in this process): `-m "not slow"` selects what `pytest tests/unit` runs."""
    for item in items:
        if Path(item.path).parent.name == "e2e":
            item.add_marker(pytest.mark.slow)
        if ray_free(item.nodeid) and "ray_cluster" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} uses a Ray cluster: it belongs in tests/e2e")


def ray_free(nodeid: str) -> bool:
    return nodeid.startswith(("tests/unit/", *RAY_FREE_E2E))


@pytest.fixture(autouse=True)
def no_ray(request):
    """A test of tests/unit or `RAY_FREE_E2E` that starts Ray fails (in a one-process run of
    the whole suite, tests before it may have joined the session's cluster already: then there
    is nothing to tell)."""
    before = not ray_free(request.node.nodeid) or _ray_initialized()
    yield
    assert before or not _ray_initialized(), "this test started Ray: move it to tests/e2e"


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """On several processes (`pytest -n 2`, as CI runs it), the tests/e2e that use Ray go to
    one of them, whole and in order, with the one Ray cluster they share, and the others
    (tests/unit, `RAY_FREE_E2E`) spread over the others. (xdist's own `--dist loadgroup` cannot
    group them: it renames the tests' node ids, which pytest 9.2 no longer lets it do.)"""
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if ray_free(nodeid) else "tests/e2e"

    return EndToEndTogether(config, log)


def pytest_runtest_setup(item) -> None:
    """Tests marked `gpu` need CUDA: where torch cannot use it they are skipped, saying why."""
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"needs CUDA, which torch {torch.__version__} here cannot use")


@dataclass
class RayCluster:
    address: str
    dashboard_url: str
    env: dict[str, str]

    def start_run(self, *arguments: str, log: Path | None = None) -> subprocess.Popen:
        """`vivit-batch run ARGUMENTS` in its own process, joining this cluster (its output
        goes to `log`, else nowhere)."""
        with open(log or os.devnull, "w") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "vivit_batch.cli", "run", *arguments],
                env={**os.environ, "RAY_ADDRESS": self.address},
                stdout=output,
                stderr=subprocess.STDOUT,
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> RayCluster:
    """A head node started with `ray start`, which the test process joins as a driver.

    Teardown stops this cluster's processes only (they name its GCS port); `ray stop` would
    stop every Ray cluster on the machine, other people's included.
    """
    import ray
    from ray._private.utils import get_dashboard_dependency_error

    # Without Ray's default extras (a lent GPU machine with gpu_check.sh's kit) the head starts
    # without its dashboard: the tests that submit jobs need it, those run there do not.
    with_dashboard = get_dashboard_dependency_error() is None
    port, dashboard = free_port(), free_port()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            f"--include-dashboard={str(with_dashboard).lower()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # The job agent's default port (52365) is taken by any other Ray on the machine;
            # without it, `ray job submit` only ever hears "No available agent".
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    address = f"127.0.0.1:{port}"
    ray.init(address=address, logging_level="WARNING")
    yield RayCluster(address, f"http://127.0.0.1:{dashboard}", RAY_ENV)
    ray.shutdown()
    stop_processes_naming(f"[:=]{port}( |$)")  # every process of this cluster names its port


def stop_processes_naming(pattern: str, grace_s: float = 10) -> None:
    """Stop the processes whose command line matches `pattern`, and their descendants (Ray's
    agents and workers rename themselves, so only their parents name the cluster): SIGTERM,
    then SIGKILL for what is left after `grace_s`, as `ray stop` does (the GCS server handles
    SIGTERM and does not always exit on it)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    pids = descendants_and_self({int(pid) for pid in found.split()})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + grace_s
        while pids and time.time() < deadline:
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not zombie(pid)}
            time.sleep(0.2)


def descendants_and_self(pids: set[int]) -> set[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, in this process (see tests/helpers/s3.py)."""
    from tests.helpers.s3 import start_moto

    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def proxy(s3_server):
    """A proxy in front of the S3 server that records every request (see `FaultyProxy`)."""
    from tests.helpers.s3 import FaultyProxy

    counting = FaultyProxy(s3_server.port)
    yield counting
    counting.stop()


@dataclass
class MotionOutput:
    """An output of real embeddings (see `motion_output`) and how it was labelled."""

    output: Path
    manifest: Path
    settings: list[str]
    """the `--set` values it was labelled with"""


MOTION_VIDEOS = 112  # 16 of each motion
MOTION_SEED = 31337  # neither of the demo model's training seeds (0, 7919)


@pytest.fixture(scope="session")
def motion_output(tmp_path_factory) -> MotionOutput:
    """The demo model's output on generated motion videos, labelled in this process (no Ray),
    with each video's motion group (`demo.run.MOTION_GROUPS`, a grouping of the classes the
    model separates) in the manifest column `label`, read as `manifest_label`."""
    import csv

    from vivit_batch.config import load_config
    from vivit_batch.demo import CHECKPOINT_DIR, FRAME_SAMPLE_RATE, write_sample_set
    from vivit_batch.demo.run import MOTION_GROUPS
    from vivit_batch.testing.outputs import label_in_process

    directory = tmp_path_factory.mktemp("motion")
    videos = write_sample_set(directory / "videos", MOTION_VIDEOS, MOTION_SEED)
    manifest = directory / "manifest.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["uri", "video_id", "label", "motion"])
        for video in videos:
            writer.writerow([video.path, video.path.stem, MOTION_GROUPS[video.label], video.label])
    settings = [
        f"sampling.frame_sample_rate={FRAME_SAMPLE_RATE}",
        "manifest.column_prefix=manifest_",
    ]
    output = directory / "output"
    config = load_config(
        None,
        [*settings, "decode.isolation=none"],
        manifest_uri=str(manifest),
        output_uri=str(output),
        model_source=str(CHECKPOINT_DIR),
    )
    label_in_process(config)
    return MotionOutput(output, manifest, settings)


@pytest.fixture(scope="session")
def motion_head(motion_output, tmp_path_factory) -> Path:
    """`train-head` on `motion_output`'s groups, with the output's own model as backbone."""
    from vivit_batch.cli import main

    head = tmp_path_factory.mktemp("motion-head")
    arguments = ["--truth-column", "manifest_label", "--save", str(head)]
    assert main(["train-head", str(motion_output.output), *arguments]) == 0
    return head


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    """An output location on local disk, then in a fresh bucket of the S3 server."""
    from tests.helpers.locks import Backend

    if request.param == "local":
        return Backend("local", str(tmp_path))
    server = request.getfixturevalue("s3_server")
    bucket = f"lock-{uuid.uuid4().hex[:12]}"
    server.filesystem().mkdir(bucket)
    return Backend("s3", f"s3://{bucket}", server)


@pytest.fixture
def segments_output(tmp_path):
    """A segments output: three videos in nine segments, one error row (`SEGMENTS`)."""
    from tests.helpers.outputs import HIDDEN, START, commit_rows, new_output, segment_rows
    from vivit_batch.output import output_schema

    output = new_output(tmp_path / "segments")
    commit_rows(output, segment_rows("night1", START), output_schema(HIDDEN, segments=True), START)
    return output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small checkpoint in Hugging Face layout, one per test module."""
    from vivit_batch.testing.checkpoints import make_checkpoint

    directory = tmp_path_factory.mktemp("checkpoint")
    make_checkpoint(directory)
    return directory


# Fixtures that tests in both tests/unit and tests/e2e use, imported after the environment above
# is set (they import the package).
from tests.helpers.fixtures import (  # noqa: E402, F401
    nightly_output,
    ours,
    sources,
    tiny,
    video_output,
)
