"""Planning the actor pools from what the cluster has: plain arithmetic, no Ray.

Without GPUs for inference (none in the cluster, or `resources.inference_gpus=0`), torch gets
half the cores and decoding the other half. With GPUs, one inference actor per GPU (or per
`inference_gpus` of one), and decoding on the CPU-only nodes if there are any (else on the GPU
nodes' spare cores). The pools' CPU reservations are scaled to leave RAY_DATA_HEADROOM_CPUS free
for Ray Data's own tasks.

That is the pools' size at start, and their minimum. On an autoscaling cluster they grow, with
the same actors, up to what its largest size holds (`ClusterShape.max_cpus`/`max_gpus`, from
the autoscaler's configuration) or the `resources.max_*` settings; on a fixed cluster their
maximum is their start size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vivit_batch.config import JobConfig
from vivit_batch.device import CPU, CUDA

RAY_DATA_HEADROOM_CPUS = 1.0
"""Some Ray Data steps (listing files for read_parquet) always ask for a whole CPU; the actor
pools leave this much unclaimed so they can run."""


@dataclass(frozen=True)
class ClusterShape:
    """What planning needs to know of a cluster (see `cluster.cluster_shape`)."""

    cpus: int
    gpus: float = 0.0
    cpu_only_nodes: dict[str, float] = field(default_factory=dict)
    """node id -> CPUs, for the alive nodes with CPUs and no GPU"""
    max_cpus: float | None = None
    """the most CPUs the autoscaler may grow the cluster to; None: a fixed cluster"""
    max_gpus: float = 0.0
    """the most GPUs the autoscaler may grow the cluster to"""


@dataclass
class Resources:
    """The actor pools. Threads are what the actors run; CPUs what they reserve in Ray."""

    decode_actors: int
    decode_threads: int
    decode_cpus: float
    inference_actors: int
    inference_threads: int
    inference_cpus: float
    inference_gpus: float
    max_decode_actors: int
    max_inference_actors: int
    """the pools grow up to these as nodes join (equal to the start sizes on a fixed cluster)"""
    decode_nodes: list[str] = field(default_factory=list)
    """the CPU-only nodes at start, when inference uses GPUs: decode actors keep off GPU nodes"""

    @property
    def inference_device(self) -> str:
        return CUDA if self.inference_gpus else CPU

    def describe(self) -> str:
        inference = (
            f"{self.inference_gpus:g} GPU ({CUDA}) + {self.inference_cpus:g} CPU"
            if self.inference_gpus
            else f"{self.inference_cpus:g} CPU ({CPU}, {self.inference_threads} torch threads)"
        )
        nodes = (
            f" on CPU-only nodes (at start: {', '.join(self.decode_nodes)})"
            if self.decode_nodes
            else ""
        )
        return (
            f"{_sizes(self.inference_actors, self.max_inference_actors)} inference actor(s), "
            f"each {inference}; {_sizes(self.decode_actors, self.max_decode_actors)} decode "
            f"actor(s), each {self.decode_cpus:.2g} CPU with {self.decode_threads} PyAV "
            f"thread(s){nodes}"
        )


def _sizes(start: int, most: int) -> str:
    return str(start) if start == most else f"{start} (up to {most} as nodes join)"


def plan_resources(config: JobConfig, cluster: ClusterShape) -> Resources:
    """The actor pools for `cluster`; explicit `resources.*` settings win."""
    r = config.resources
    default_gpus = 1.0 if cluster.gpus or cluster.max_gpus else 0.0  # GPU nodes to come count
    gpus_per_actor = default_gpus if r.inference_gpus is None else r.inference_gpus
    gpus = gpus_per_actor > 0
    decode_threads = config.decode.threads
    inference_actors = r.inference_actors or _capped(
        max(1, int(cluster.gpus / gpus_per_actor)) if gpus else 1, r.max_inference_actors
    )
    inference_threads = 1 if gpus else r.inference_cpus or max(1, cluster.cpus // 2)
    inference_total = inference_actors * inference_threads
    cpu_nodes = cluster.cpu_only_nodes if gpus else {}
    decode_pool_cpus = sum(cpu_nodes.values()) or cluster.cpus - inference_total
    decode_actors = r.decode_actors or _capped(
        max(1, int(decode_pool_cpus // decode_threads)), r.max_decode_actors
    )
    budget = cluster.cpus - RAY_DATA_HEADROOM_CPUS
    if gpus:  # GPU actors keep a whole CPU each
        inference_scale = 1.0
        decode_budget = min(decode_pool_cpus, budget - inference_total)
        decode_scale = decode_budget / (decode_actors * decode_threads)
    else:
        inference_scale = decode_scale = budget / (inference_total + decode_actors * decode_threads)
    decode_cpus = decode_threads * min(1.0, max(0.1, decode_scale))
    inference_cpus = inference_threads * min(1.0, max(0.1, inference_scale))
    grown_inference, grown_decode = _largest_pools(
        cluster, gpus_per_actor, inference_threads, inference_cpus, decode_cpus
    )
    return Resources(
        decode_actors=decode_actors,
        decode_threads=decode_threads,
        decode_cpus=decode_cpus,
        inference_actors=inference_actors,
        inference_threads=inference_threads,
        inference_cpus=inference_cpus,
        inference_gpus=float(gpus_per_actor),
        max_decode_actors=_maximum(
            r.max_decode_actors, r.decode_actors, decode_actors, grown_decode
        ),
        max_inference_actors=_maximum(
            r.max_inference_actors, r.inference_actors, inference_actors, grown_inference
        ),
        decode_nodes=sorted(cpu_nodes),
    )


def _capped(size: int, most: int | None) -> int:
    return min(size, most) if most else size


def _largest_pools(
    cluster: ClusterShape,
    gpus_per_actor: float,
    inference_threads: int,
    inference_cpus: float,
    decode_cpus: float,
) -> tuple[int, int]:
    """How many inference and decode actors (as planned) the autoscaler's largest cluster holds:
    one inference actor per `gpus_per_actor` GPUs, or per `inference_threads` of half the CPUs,
    and decode actors on the other CPUs; 0, 0 on a fixed cluster."""
    if cluster.max_cpus is None:
        return 0, 0
    inference = (
        int(cluster.max_gpus / gpus_per_actor)
        if gpus_per_actor
        else int(cluster.max_cpus // 2 // inference_threads)
    )
    free = cluster.max_cpus - RAY_DATA_HEADROOM_CPUS - inference * inference_cpus
    return inference, int(free // decode_cpus)


def _maximum(most: int | None, size: int | None, start: int, largest: int) -> int:
    """A pool's maximum: `resources.max_*`, else its start size if `resources.*_actors` set it,
    else what the largest cluster holds (never below the start size)."""
    if most:
        return most
    return start if size else max(start, largest)
