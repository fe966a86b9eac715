"""The codebase stays ruff-clean, ruff-formatted and type-checked (part of the test command, so
CI enforces them)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["vivit_batch", "tests", "benchmarks", "jobs"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_check_is_clean():
    result = run("ruff", "check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied():
    result = run("ruff", "format", "--check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # a minute from a cold cache; seconds from .mypy_cache
def test_mypy_finds_no_type_errors():
    result = run("mypy")  # what it checks, and how strictly: pyproject.toml's [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
