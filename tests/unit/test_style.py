"""The codebase stays ruff-clean, ruff-formatted and type-checked (part of the test command, so
CI enforces them)."""

from tests.helpers.style import run

CODE = ["vivit_batch", "tests", "benchmarks", "jobs"]


def test_ruff_check_is_clean():
    result = run("ruff", "check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied():
    result = run("ruff", "format", "--check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr
