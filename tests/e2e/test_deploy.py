"""The deployment files, the slow checks: the CPU image built and run (VIVIT_BATCH_DOCKER_BUILD=1),
and the launcher skipping a night while a live run holds the output."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.deploy import (
    LAUNCHER,
    ROOT,
    VERSION,
    lock_check_command,
)
from vivit_batch.output import Output


def run_launcher(tmp_path: Path, output: str) -> tuple[str, list[str]]:
    """The launcher pod's two commands, in order, as its containers would run them: against
    a local output, the repository for /app, and a `kubectl` that records its arguments."""
    env, check = lock_check_command()
    [launch] = LAUNCHER["containers"]
    launch_dir, bin_dir = tmp_path / "launch", tmp_path / "bin"
    launch_dir.mkdir(parents=True)
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/kubectl-calls\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    process_env = {
        **os.environ,
        **env,
        "VIVIT_OUTPUT": output,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    printed = []
    for script in (check, launch["command"][2]):
        script = script.replace("/app/", f"{ROOT}/").replace("/launch/", f"{launch_dir}/")
        done = subprocess.run(["sh", "-c", script], env=process_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        printed.append(done.stdout.strip())
    calls = tmp_path / "kubectl-calls"
    return "\n".join(printed), calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.slow  # two `vivit-batch lock` processes: torch's import, twice
def test_the_launcher_skips_the_night_while_a_live_run_holds_the_output(tmp_path):
    output = Output(str(tmp_path / "labels"))
    with output.lock("last-night", stale_after_s=1.0):
        printed, kubectl = run_launcher(tmp_path, output.uri)
    assert "held by run last-night" in printed and "skipped tonight" in printed
    assert kubectl == []
    printed, kubectl = run_launcher(tmp_path / "next", output.uri)
    assert printed.startswith("released by run last-night")
    assert kubectl == ["create -f /specs/rayjob.yaml"]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("VIVIT_BATCH_DOCKER_BUILD") or shutil.which("docker") is None,
    reason="builds the image from PyPI: set VIVIT_BATCH_DOCKER_BUILD=1 on a machine with docker",
)
def test_the_cpu_image_builds_and_runs_the_cli():
    tag = f"vivit-batch:{VERSION}-test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True)
    done = subprocess.run(
        ["docker", "run", "--rm", tag, "vivit-batch", "lock", "/tmp/out"],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "free: no run has locked this output yet")
