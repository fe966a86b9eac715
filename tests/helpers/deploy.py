"""What the fast and the end-to-end tests of `test_deploy` share."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

K8S = ROOT / "configs" / "k8s"

VERSION = re.findall(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[0]


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def one(name: str, kind: str) -> dict:
    [found] = [d for d in documents(name) if d["kind"] == kind]
    return found


CRONJOB = one("cronjob.yaml", "CronJob")

LAUNCHER = CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def lock_check_command() -> tuple[dict, str]:
    [check] = LAUNCHER["initContainers"]
    env = {e["name"]: e["value"] for e in check["env"]}
    assert check["command"][:2] == ["sh", "-c"]
    return env, check["command"][2]
