"""The codebase type-checks (mypy from a cold cache: slow)."""

import pytest

from tests.helpers.style import run


@pytest.mark.slow  # a minute from a cold cache; seconds from .mypy_cache
def test_mypy_finds_no_type_errors():
    result = run("mypy")  # what it checks, and how strictly: pyproject.toml's [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
