"""The fast tests: none of them may start Ray (the end-to-end ones are in tests/e2e)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def no_ray():
    yield
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "a unit test started Ray: move it to tests/e2e"
