"""The Ray cluster the job runs on: joining it, and what it has."""

from __future__ import annotations

import itertools
import logging

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vivit_batch.job.resources import ClusterShape


def connect(address: str | None) -> None:
    """Join the cluster at `address`, else start an embedded local Ray (not a cluster that
    some earlier `ray start` left running)."""
    if not ray.is_initialized():
        ray.init(
            address=address or "local",
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}} if not address else None,
        )


def cluster_shape() -> ClusterShape:
    resources = ray.cluster_resources()
    return ClusterShape(
        cpus=int(resources.get("CPU", 1)),
        gpus=resources.get("GPU", 0.0),
        cpu_only_nodes={
            node["NodeID"]: node["Resources"]["CPU"]
            for node in ray.nodes()
            if node["Alive"] and node["Resources"].get("CPU") and not node["Resources"].get("GPU")
        },
    )


def placement_on(nodes: list[str]):
    """Ray remote args that spread successive actors over `nodes` (soft: they may go elsewhere
    when those nodes are full); None when there is nothing to steer."""
    if not nodes:
        return None
    cycle = itertools.cycle(nodes)
    return lambda: {"scheduling_strategy": NodeAffinitySchedulingStrategy(next(cycle), soft=True)}
