"""Planning the actor pools from what the cluster has: plain arithmetic, no Ray.

Without GPUs for inference (none in the cluster, or `resources.inference_gpus=0`), torch gets
half the cores and decoding the other half. With GPUs, one inference actor per GPU (or per
`inference_gpus` of one), and decoding on the CPU-only nodes if there are any (else on the GPU
nodes' spare cores). The pools' CPU reservations are scaled to leave RAY_DATA_HEADROOM_CPUS free
for Ray Data's own tasks.
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
    decode_nodes: list[str] = field(default_factory=list)
    """CPU-only nodes that decode actors are placed on (when inference uses GPUs)"""

    @property
    def inference_device(self) -> str:
        return CUDA if self.inference_gpus else CPU

    def describe(self) -> str:
        inference = (
            f"{self.inference_gpus:g} GPU ({CUDA}) + {self.inference_cpus:g} CPU"
            if self.inference_gpus
            else f"{self.inference_cpus:g} CPU ({CPU}, {self.inference_threads} torch threads)"
        )
        nodes = f" on CPU-only nodes {', '.join(self.decode_nodes)}" if self.decode_nodes else ""
        return (
            f"{self.inference_actors} inference actor(s), each {inference}; "
            f"{self.decode_actors} decode actor(s), each {self.decode_cpus:.2g} CPU with "
            f"{self.decode_threads} PyAV thread(s){nodes}"
        )


def plan_resources(config: JobConfig, cluster: ClusterShape) -> Resources:
    """The actor pools for `cluster`; explicit `resources.*` settings win."""
    r = config.resources
    default_gpus = 1.0 if cluster.gpus else 0.0
    gpus_per_actor = default_gpus if r.inference_gpus is None else r.inference_gpus
    gpus = gpus_per_actor > 0
    decode_threads = config.decode.threads
    inference_actors = r.inference_actors or (
        max(1, int(cluster.gpus / gpus_per_actor)) if gpus else 1
    )
    inference_threads = 1 if gpus else r.inference_cpus or max(1, cluster.cpus // 2)
    inference_total = inference_actors * inference_threads
    cpu_nodes = cluster.cpu_only_nodes if gpus else {}
    decode_pool_cpus = sum(cpu_nodes.values()) or cluster.cpus - inference_total
    decode_actors = r.decode_actors or max(1, int(decode_pool_cpus // decode_threads))
    budget = cluster.cpus - RAY_DATA_HEADROOM_CPUS
    if gpus:  # GPU actors keep a whole CPU each
        inference_scale = 1.0
        decode_budget = min(decode_pool_cpus, budget - inference_total)
        decode_scale = decode_budget / (decode_actors * decode_threads)
    else:
        inference_scale = decode_scale = budget / (inference_total + decode_actors * decode_threads)
    return Resources(
        decode_actors=decode_actors,
        decode_threads=decode_threads,
        decode_cpus=decode_threads * min(1.0, max(0.1, decode_scale)),
        inference_actors=inference_actors,
        inference_threads=inference_threads,
        inference_cpus=inference_threads * min(1.0, max(0.1, inference_scale)),
        inference_gpus=float(gpus_per_actor),
        decode_nodes=sorted(cpu_nodes),
    )
