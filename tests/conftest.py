"""Shared fixtures: one real Ray cluster (`ray start --head`, token auth) per test session."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
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
# Test S3 credentials for the moto server (tests/s3.py), exported before the Ray cluster starts
# so that its workers inherit them; nothing may ever reach real AWS.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "AKIATESTVIVITBATCH01",
        "AWS_SECRET_ACCESS_KEY": "vivit-batch-secret-never-printed-8d1f0a",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)


@dataclass
class RayCluster:
    address: str
    dashboard_url: str
    env: dict[str, str]


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

    port, dashboard = free_port(), free_port()
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--disable-usage-stats"],
        check=True, capture_output=True, timeout=120,
    )
    address = f"127.0.0.1:{port}"
    ray.init(address=address, logging_level="WARNING")
    yield RayCluster(address, f"http://127.0.0.1:{dashboard}", RAY_ENV)
    ray.shutdown()
    # Every process of this cluster names its GCS port (as an address or an option).
    subprocess.run(["pkill", "-f", f"[:=]{port}( |$)"], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server process on 127.0.0.1 (see tests/s3.py)."""
    from tests.s3 import start_moto

    server = start_moto()
    yield server
    server.stop()
