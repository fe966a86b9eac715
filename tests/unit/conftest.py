"""The fast tests: none of them may start Ray (the end-to-end ones are in tests/e2e)."""

from __future__ import annotations

import sys

import pytest


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def no_ray():
    """A unit test that starts Ray fails (in a whole-suite run, e2e tests before it may have
    joined the session's cluster already: then there is nothing to tell)."""
    before = _ray_initialized()
    yield
    assert before or not _ray_initialized(), "a unit test started Ray: move it to tests/e2e"
