"""Resource plans for a cluster of a given shape, as the driver makes them (no Ray)."""

from __future__ import annotations

from vivit_batch.calibration import StageCosts
from vivit_batch.config import load_config
from vivit_batch.job import ClusterShape, plan_resources
from vivit_batch.job.resources import Resources


def plan(
    *settings: str,
    cpus: int = 2,
    gpus: float = 0,
    cpu_nodes: dict | None = None,
    costs: StageCosts | None = None,
    videos: int | None = None,
    **shape,
) -> Resources:
    """`plan_resources` with `settings` (`section.key=value`) on a cluster of `cpus` and `gpus`
    (`shape`: the other `ClusterShape` fields)."""
    cluster = ClusterShape(cpus=cpus, gpus=gpus, cpu_only_nodes=cpu_nodes or {}, **shape)
    return plan_resources(load_config(None, list(settings)), cluster, costs, videos)
