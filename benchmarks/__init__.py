"""Benchmarks: run each from the repository root as `python -m benchmarks.NAME` (see
BENCHMARKS.md for what each measures and its latest figures)."""
