"""Planning the actor pools from what the cluster has and what each stage costs: plain
arithmetic, no Ray.

Without GPUs for inference (none in the cluster, or `resources.inference_gpus=0`), the cores go
to decoding and to torch in proportion to what each stage costs per clip for this model, input
and machine (`calibration.StageCosts`; half each without a measurement), each stage rounded up
to whole threads so that neither waits for want of one: Ray Data's backpressure keeps the faster
stage from taking more than its share. With GPUs, one inference actor per GPU (or per
`inference_gpus` of one), and decoding on the CPU-only nodes if there are any (else on the GPU
nodes' spare cores). No more decode actors than videos to label, and short manifests get
smaller decode calls so that every decode actor has several. The pools' CPU reservations are
scaled to leave RAY_DATA_HEADROOM_CPUS free for Ray Data's own tasks.

That is the pools' size at start, and their minimum. On an autoscaling cluster they grow, with
the same actors, up to what its largest size holds (`ClusterShape.max_cpus`/`max_gpus`, from
the autoscaler's configuration) or the `resources.max_*` settings; on a fixed cluster their
maximum is their start size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil, floor, inf

from vivit_batch.calibration import StageCosts
from vivit_batch.config import NVDEC_REQUIREMENT, DecodeConfig, JobConfig, ResourcesSection
from vivit_batch.device_record import CPU, CUDA
from vivit_batch.errors import ConfigError

RAY_DATA_HEADROOM_CPUS = 1.0
"""Some Ray Data steps (listing files for read_parquet) always ask for a whole CPU; the actor
pools leave this much unclaimed so they can run."""
MAX_TORCH_THREADS = 8
"""A CPU inference actor runs at most this many torch threads; more cores get more actors
(batches side by side scale better than one forward pass spread wider)."""
DECODE_BATCH_SIZE = 16
"""Videos per decode call, unless the manifest is too short to give each actor several."""
DECODE_CALLS_PER_ACTOR = 4
GPU_PLAN_DECODE_CALLS_PER_ACTOR = 64
"""Where inference runs on GPUs, decoding is what the run waits for and each decode actor's
last calls are the run's tail, longest on a CPU decoder beside NVDEC ones: calls small enough
that each actor has 64 (its last two are then about 3% of its work), between
`GPU_PLAN_SMALLEST_DECODE_CALL` and `DECODE_BATCH_SIZE` videos. Not smaller for long
manifests: Ray Data keeps about 3 KB of the driver's memory per block for each operator
(measured here: 120,000 rows in blocks of 4 took the driver to 405 MiB, 40,000 to 292)."""
GPU_PLAN_SMALLEST_DECODE_CALL = 4
"""Smaller calls cost Ray Data more to hand out than their shorter tail saves (BENCHMARKS.md,
Decode pool, 13 CPU + 7 NVDEC decoders: 1,000 videos at 4 a call reach 0.69x of the pool's
summed rate, at 1 a call 0.30x; 4,000 videos at 4 a call 0.90x, at 3 a call 0.85x)."""
GPU_DECODE_SHARE = 0.1
"""Of each GPU, the share its NVDEC decode actors reserve in Ray, together (inference actors
reserve the rest): what they use of it is the video engines, a CUDA context each and the
frames of one clip, not the GPU's compute."""
GPU_DECODER_CPUS = 0.25
"""CPU an NVDEC decode actor reserves: it reads the container, hands the packets over and
copies the resized pictures back (the decoding is the GPU's)."""
DECODE_ACTOR_START_S = 2.0
"""CPU seconds a decode actor and its decoding process take to start (BENCHMARKS.md, Start-up:
about 0.9 each on the 2-core machine): a CPU plan starts no decode actor that would decode for
less than that (a short manifest, or a share just above a whole core, finishes sooner without
it: 120 videos of 120 ms on 1.05 cores' worth, 34 s with a second actor, 30 s without)."""


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
    nvdec: bool = False
    """PyNvVideoCodec is installed where the driver runs (taken to mean: on the GPU nodes)"""


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
    decode_batch_size: int = DECODE_BATCH_SIZE
    inference_share: float | None = None
    """CPU plans: the share of the CPUs planned for inference, from the stages' costs"""
    decode_nodes: list[str] = field(default_factory=list)
    """the CPU-only nodes at start, when inference uses GPUs: decode actors keep off GPU nodes"""
    gpu_decoders: int = 0
    """decode actors, besides `decode_actors`, each given `gpu_decoder_gpus` of a GPU and
    `gpu_decoder_cpus` CPU, that decode on its NVDEC engines (`decode.device`)"""
    gpu_decoder_gpus: float = 0.0
    gpu_decoder_cpus: float = 0.0

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
        on_gpus = (
            f"; {self.gpu_decoders} decode actor(s) on NVDEC, each {self.gpu_decoder_gpus:g} GPU "
            f"+ {self.gpu_decoder_cpus:g} CPU"
            if self.gpu_decoders
            else ""
        )
        return (
            f"{_sizes(self.inference_actors, self.max_inference_actors)} inference actor(s), "
            f"each {inference}; {_sizes(self.decode_actors, self.max_decode_actors)} decode "
            f"actor(s), each {self.decode_cpus:.2g} CPU with {self.decode_threads} PyAV "
            f"thread(s){nodes}{on_gpus}"
        )


def _sizes(start: int, most: int) -> str:
    return str(start) if start == most else f"{start} (up to {most} as nodes join)"


def plan_resources(
    config: JobConfig,
    cluster: ClusterShape,
    costs: StageCosts | None = None,
    videos: int | None = None,
) -> Resources:
    """The actor pools for `cluster`, `costs` measured (CPU plans) and `videos` to label;
    explicit `resources.*` settings win."""
    r = config.resources
    gpus_per_actor = gpus_per_inference_actor(r, cluster)
    gpus = gpus_per_actor > 0
    share = None if gpus else inference_share(costs)
    decode_threads = config.decode.threads
    cpu_nodes = cluster.cpu_only_nodes if gpus else {}
    if share is None:
        inference_threads, inference_actors = 1, max(1, int(cluster.gpus / gpus_per_actor))
    else:
        torch_cpus = cluster.cpus * share
        actors = ceil(torch_cpus / (r.inference_cpus or MAX_TORCH_THREADS))
        inference_threads = r.inference_cpus or max(1, ceil(torch_cpus / actors))
        inference_actors = max(1, actors)
    inference_actors = r.inference_actors or _capped(inference_actors, r.max_inference_actors)
    inference_total = inference_actors * inference_threads
    budget = cluster.cpus - RAY_DATA_HEADROOM_CPUS
    gpu_decoders = planned_gpu_decoders(config.decode, cluster, gpus)
    gpu_decoder_cpus = gpu_decoder_cpu_share(budget - inference_total, gpu_decoders)
    gpu_decoding = gpu_decoders * gpu_decoder_cpus
    if share is None:
        decode_pool_cpus = sum(cpu_nodes.values()) or (
            cluster.cpus - inference_total - gpu_decoding
        )
        decode_actors = max(1, int(decode_pool_cpus // decode_threads))
        if config.decode.device == "cuda":
            decode_actors = 0
    else:
        decode_pool_cpus = cluster.cpus * (1 - share)
        decoding_s = videos * costs.decode_s if videos and costs and costs.decode_s else None
        decode_actors = decode_actors_worth(decoding_s, decode_pool_cpus / decode_threads)
    if videos:
        decode_actors = min(decode_actors, videos)
    if decode_actors:
        decode_actors = r.decode_actors or _capped(decode_actors, r.max_decode_actors)
    if gpus:  # GPU actors keep a whole CPU each
        inference_scale = 1.0
        decode_budget = min(decode_pool_cpus, budget - inference_total - gpu_decoding)
        decode_scale = decode_budget / max(1, decode_actors * decode_threads)
    else:
        inference_scale = decode_scale = budget / (inference_total + decode_actors * decode_threads)
    decode_cpus = decode_threads * min(1.0, max(0.1, decode_scale))
    inference_cpus = inference_threads * min(1.0, max(0.1, inference_scale))
    grown_inference, grown_decode = _largest_pools(
        cluster, gpus_per_actor, share, inference_threads, inference_cpus, decode_cpus
    )
    inference_cpus, decode_cpus, gpu_decoder_cpus = _within_budget(
        budget if _fixed(cluster) else inf,  # pools waiting for nodes make the autoscaler add them
        (inference_actors, inference_cpus),
        (decode_actors, decode_cpus),
        (gpu_decoders, gpu_decoder_cpus),
    )
    return Resources(
        decode_actors=decode_actors,
        decode_threads=decode_threads,
        decode_cpus=decode_cpus,
        inference_actors=inference_actors,
        inference_threads=inference_threads,
        inference_cpus=inference_cpus,
        inference_gpus=gpus_per_actor * (1 - GPU_DECODE_SHARE if gpu_decoders else 1.0),
        max_decode_actors=decode_actors
        and _maximum(r.max_decode_actors, r.decode_actors, decode_actors, grown_decode),
        max_inference_actors=_maximum(
            r.max_inference_actors, r.inference_actors, inference_actors, grown_inference
        ),
        decode_nodes=sorted(cpu_nodes),
        decode_batch_size=r.decode_batch_size
        or decode_batch_size(videos, decode_actors + gpu_decoders, gpus),
        inference_share=None if share is None else round(share, 4),
        gpu_decoders=gpu_decoders,
        gpu_decoder_gpus=floor(GPU_DECODE_SHARE / config.decode.gpu_decoders * 1e4) / 1e4
        if gpu_decoders
        else 0.0,
        gpu_decoder_cpus=gpu_decoder_cpus,
    )


def planned_gpu_decoders(decode: DecodeConfig, cluster: ClusterShape, gpu_plan: bool) -> int:
    """NVDEC decode actors: `decode.gpu_decoders` per GPU of the cluster at start, in a plan
    that runs inference on GPUs (`gpu_plan`), where `decode.device` allows (auto: where
    PyNvVideoCodec is installed, and not with `decode.sandbox=required`, which their sandbox
    does not meet); `ConfigError` for `decode.device=cuda` where it cannot run."""
    require_decode_device(decode, cluster, gpu_plan)
    if not gpu_plan or decode.device == "cpu" or not cluster.nvdec or decode.sandbox == "required":
        return 0
    return int(cluster.gpus) * decode.gpu_decoders


def require_decode_device(decode: DecodeConfig, cluster: ClusterShape, gpu_plan: bool) -> None:
    """`ConfigError` for `decode.device=cuda` on a cluster without GPUs or PyNvVideoCodec, or
    in a plan that labels on the CPU."""
    if decode.device == "cuda" and not (cluster.gpus and gpu_plan):
        why = (
            "inference runs on the CPU (resources.inference_gpus=0)"
            if cluster.gpus
            else "the cluster has no GPU at start"
        )
        raise ConfigError(
            f"decode.device=cuda, but {why}: set decode.device=auto (NVDEC where inference "
            "has GPUs, the CPU elsewhere) or cpu"
        )
    if decode.device == "cuda" and not cluster.nvdec:
        raise ConfigError(
            "decode.device=cuda, but PyNvVideoCodec is not installed where the job's driver "
            f"runs: pip install {NVDEC_REQUIREMENT} on the GPU nodes, or set decode.device=cpu"
        )


def gpu_decoder_cpu_share(spare_cpus: float, gpu_decoders: int) -> float:
    """CPU each NVDEC decode actor reserves: `GPU_DECODER_CPUS`, or less where that would be
    more than half the `spare_cpus` that inference leaves (a small machine), so that they all
    start; 0 without any."""
    if not gpu_decoders:
        return 0.0
    return round(min(GPU_DECODER_CPUS, max(0.01, spare_cpus / (2 * gpu_decoders))), 4)


def gpus_per_inference_actor(resources: ResourcesSection, cluster: ClusterShape) -> float:
    """`resources.inference_gpus`, by default 1 on a cluster with GPUs (or GPU nodes to come)
    and 0 (inference on CPUs) without."""
    if resources.inference_gpus is not None:
        return resources.inference_gpus
    return 1.0 if cluster.gpus or cluster.max_gpus else 0.0


def plans_from_costs(resources: ResourcesSection) -> bool:
    """Whether a plan may need the stages' costs: inference may run on CPUs, and not every CPU
    pool size is set."""
    sizes = (resources.decode_actors, resources.inference_actors, resources.inference_cpus)
    return not resources.inference_gpus and not all(sizes)


def inference_share(costs: StageCosts | None) -> float:
    """The share of the CPUs torch needs to keep pace with decoding: its cost per clip over
    both stages' (half without a measurement)."""
    if costs is None or costs.decode_s is None:
        return 0.5
    return costs.inference_s / (costs.decode_s + costs.inference_s)


def decode_actors_worth(decoding_s: float | None, wanted: float) -> int:
    """Decode actors for `wanted` actors' worth of cores, rounded up, less the last ones whose
    part of the run's `decoding_s` CPU seconds (None: not known) would not pay for their start
    (`DECODE_ACTOR_START_S`): 1.05 cores of decoding are one actor unless the run is long."""
    actors = max(1, ceil(wanted))
    while decoding_s is not None and actors > 1:
        capacity = min(actors, wanted)
        last = (capacity - (actors - 1)) / capacity  # the last actor's part of the decoding
        if decoding_s * last >= DECODE_ACTOR_START_S:
            break
        actors -= 1
    return actors


def decode_batch_size(videos: int | None, decode_actors: int, gpu_plan: bool) -> int:
    """`DECODE_BATCH_SIZE`, or fewer so that `videos` give each decode actor
    `DECODE_CALLS_PER_ACTOR` calls, and in a `gpu_plan` `GPU_PLAN_DECODE_CALLS_PER_ACTOR` (down
    to `GPU_PLAN_SMALLEST_DECODE_CALL` videos): one actor's last calls are then a small part of
    the run."""
    if videos is None:
        return DECODE_BATCH_SIZE
    size = videos // (decode_actors * DECODE_CALLS_PER_ACTOR)
    if gpu_plan:
        many_calls = videos // (decode_actors * GPU_PLAN_DECODE_CALLS_PER_ACTOR)
        size = min(size, max(GPU_PLAN_SMALLEST_DECODE_CALL, many_calls))
    return max(1, min(DECODE_BATCH_SIZE, size))


def _capped(size: int, most: int | None) -> int:
    return min(size, most) if most else size


def _within_budget(budget: float, *pools: tuple[int, float]) -> list[float]:
    """Each pool's CPUs per actor (`pools`: actors, CPUs each), scaled down together where they
    add up to more than `budget`, the cluster's CPUs less Ray Data's headroom: Ray Data's own
    tasks ask for a whole CPU, and wait for ever where actors hold part of the last one (the
    least shares on a machine of 1 CPU, or of 2 with a GPU). To none where nothing is left:
    Ray places an actor that asks for no CPU."""
    reserved = sum(actors * cpus for actors, cpus in pools)
    if reserved <= budget:
        return [cpus for _, cpus in pools]
    fit = max(0.0, budget) / reserved
    return [floor(cpus * fit * 1e4) / 1e4 for _, cpus in pools]


def _fixed(cluster: ClusterShape) -> bool:
    """Whether the cluster will not grow: no autoscaler, or one that may add no CPUs."""
    return cluster.max_cpus is None or cluster.max_cpus <= cluster.cpus


def _largest_pools(
    cluster: ClusterShape,
    gpus_per_actor: float,
    share: float | None,
    inference_threads: int,
    inference_cpus: float,
    decode_cpus: float,
) -> tuple[int, int]:
    """How many inference and decode actors (as planned) the autoscaler's largest cluster holds:
    one inference actor per `gpus_per_actor` GPUs, or per `inference_threads` of the CPUs'
    inference `share`, and decode actors on the other CPUs; 0, 0 on a fixed cluster."""
    if cluster.max_cpus is None:
        return 0, 0
    inference = (
        int(cluster.max_gpus / gpus_per_actor)
        if share is None
        else int(cluster.max_cpus * share // inference_threads)
    )
    free = cluster.max_cpus - RAY_DATA_HEADROOM_CPUS - inference * inference_cpus
    return inference, int(free // decode_cpus)


def _maximum(most: int | None, size: int | None, start: int, largest: int) -> int:
    """A pool's maximum: `resources.max_*`, else its start size if `resources.*_actors` set it,
    else what the largest cluster holds (never below the start size)."""
    if most:
        return most
    return start if size else max(start, largest)
