"""The Ray cluster the job runs on: joining it (or starting an embedded one, without the
dashboard: a laptop run pays for no process it does not use), and what it has."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray
import ray.data as ray_data
from ray._private.state import state as global_state

from vivit_batch.interrupts import deferred, handlers_kept, spared_group_signals
from vivit_batch.job.resources import ClusterShape, Resources
from vivit_batch.logs import adopt_ray_loggers, filter_native_stderr
from vivit_batch.video.nvdec import nvdec_installed

NODE_ID_LABEL = "ray.io/node-id"
"""the label Ray gives every node: its id"""


def connect(address: str | None, verbose: bool = False) -> None:
    """Join the cluster at `address`, else start an embedded local Ray (not a cluster that
    some earlier `ray start` left running). The actors' own output reaches this process's log
    only when `verbose` (it lacks times and levels; Ray keeps it in its log files), and so do
    Ray's C++ lines about Ray's own choices (`filter_native_stderr`)."""
    if not verbose:
        filter_native_stderr()
    ray_data.DataContext.get_current()  # Ray Data sets up its logging on first use
    adopt_ray_loggers()
    if ray.is_initialized():
        return
    # The command's signal handlers, not ray.init's (`interrupts`); a stop during ray.init is
    # raised once it returns: one that cut it short left a driver that could crash as it exited
    # (SIGSEGV in Ray's core worker, 4 runs in 28 stopped about 6 s after their start).
    with handlers_kept(), deferred():
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose)
        else:
            with environment(EMBEDDED_RAY_ENVIRONMENT), spared_group_signals():
                ray.init(
                    address="local",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=verbose,
                )
    adopt_ray_loggers()  # and ray.init Ray's


EMBEDDED_RAY_ENVIRONMENT = {"PYTHONWARNINGS": "ignore"}
"""What the processes of an embedded Ray inherit (its workers among them). Not a job
`runtime_env`: the workers Ray starts ahead of the job have none, so they could not serve it."""


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """`variables` in this process's environment for the block (for the processes it starts)."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def cluster_shape() -> ClusterShape:
    resources = ray.cluster_resources()
    largest = autoscaler_limits()
    return ClusterShape(
        cpus=int(resources.get("CPU", 1)),
        gpus=resources.get("GPU", 0.0),
        cpu_only_nodes={
            node["NodeID"]: node["Resources"]["CPU"]
            for node in ray.nodes()
            if node["Alive"] and node["Resources"].get("CPU") and not node["Resources"].get("GPU")
        },
        max_cpus=None if largest is None else largest.get("CPU", 0),
        max_gpus=0.0 if largest is None else largest.get("GPU", 0),
        nvdec=nvdec_installed(),
    )


def autoscaler_limits() -> dict[str, int] | None:
    """The most of each resource the autoscaler may grow the cluster to, from the node groups'
    maximum counts in the configuration it publishes to Ray (the v2 autoscaler does, e.g. on
    KubeRay); None where there is none: a fixed cluster, or an autoscaler that does not say.
    Ray Train and Ray Data read it the same way (a private module of Ray's)."""
    return global_state.get_max_resources_from_cluster_config()


def decode_placement(resources: Resources) -> DecodePlacement | None:
    """`DecodePlacement`, where the plan needs it (NVDEC decoders, or CPU-only nodes to steer
    to): Ray 2.60 deprecates `ray_remote_args_fn` (gone in 2.64), and warns when it is given."""
    return DecodePlacement(resources) if resources.gpu_decoders or resources.decode_nodes else None


class DecodePlacement:
    """The Ray remote args of each decode actor, asked as the pool starts it (Ray Data's
    `ray_remote_args_fn`): the first `resources.gpu_decoders` get their share of a GPU, on
    whose NVDEC engines they decode (`stages.decode.decoding_device`); the others keep off
    the GPU nodes alive when they start where the plan decodes on CPU-only nodes, so that
    CPU-only nodes that join take their share and GPU nodes that join are left to inference
    (a label selector, not a pin to the nodes at start). One pool for both kinds: Ray Data
    hands each batch to the actor with the fewest in flight, so the faster decoders take more."""

    def __init__(self, resources: Resources):
        self._gpu_args = {
            "num_gpus": resources.gpu_decoder_gpus,
            "num_cpus": resources.gpu_decoder_cpus,
        }
        self._gpu_decoders_left = resources.gpu_decoders
        self._steer = bool(resources.decode_nodes)

    def __call__(self) -> dict:
        if self._gpu_decoders_left:
            self._gpu_decoders_left -= 1
            return dict(self._gpu_args)
        return _off_gpu_nodes() if self._steer else {}


def _off_gpu_nodes() -> dict:
    gpu_nodes = [
        node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("GPU")
    ]
    if not gpu_nodes:
        return {}
    return {"label_selector": {NODE_ID_LABEL: f"!in({','.join(gpu_nodes)})"}}
