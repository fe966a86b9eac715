"""Helpers the test modules share: servers started in the test process, output builders, lock
scenarios. Fixtures live in `tests/conftest.py`."""
