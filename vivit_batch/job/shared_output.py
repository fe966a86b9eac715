"""A local output on a multi-node cluster must be one folder that every node sees: the tasks
that read its committed files to decide the work run on whichever node Ray gives them, and on
node-local storage they would find other files, or none. So it is checked before any work: the
driver writes a marker file (a random name under the run's `_tmp/<run_id>/`) and a task pinned
to each alive node looks for it. A single-node cluster skips the check, at no cost at start-up.
Nodes that join after the check are not checked.
"""

from __future__ import annotations

import contextlib
import os

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from vivit_batch.errors import ConfigError
from vivit_batch.output import Output

ANSWER_TIMEOUT_S = 120.0
"""How long the nodes have to answer, together (a node starts a worker process to do it)."""

_sees = ray.remote(num_cpus=0)(os.path.exists)
"""Whether a path exists as the node that runs it sees it: `os.path.exists` itself, so that the
worker imports nothing of vivit-batch to answer."""


def require_shared_output(output: Output, run_id: str) -> None:
    """`ConfigError` (exit 2) when the output is a local path and some alive node of a
    multi-node cluster does not see the same folder there as this process."""
    if not output.is_local:
        return
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    marker = output.stage(b"", run_id, "shared-output-check")
    try:
        blind = nodes_not_seeing(marker, nodes)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(marker)
        with contextlib.suppress(OSError):  # the run's staging folder, unless it holds more
            os.rmdir(os.path.dirname(marker))
    if blind:
        raise ConfigError(
            f"output {output.uri} is a local path that not every node of this {len(nodes)}-node "
            f"Ray cluster sees: {'; '.join(blind)} did not find the file {marker} that this "
            "process wrote there, so the tasks there that read the output's committed files "
            "would not find them. Put the output on a filesystem that every node shares "
            "(mounted at the same path), or on S3"
        )


def nodes_not_seeing(path: str, nodes: list[dict]) -> list[str]:
    """Each of `nodes` (from `ray.nodes()`) that does not see `path`, described, with why
    where it could not look (no answer within `ANSWER_TIMEOUT_S`, or the task failed)."""
    answers = {
        _sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(path): node
        for node in nodes
    }
    ready, _ = ray.wait(list(answers), num_returns=len(answers), timeout=ANSWER_TIMEOUT_S)
    blind = []
    for answer, node in answers.items():
        if answer not in ready:
            blind.append(f"{describe_node(node)} (no answer within {ANSWER_TIMEOUT_S:g} s)")
            continue
        try:
            if not ray.get(answer):
                blind.append(describe_node(node))
        except RayError as error:
            blind.append(f"{describe_node(node)} (could not look: {type(error).__name__})")
    return blind


def describe_node(node: dict) -> str:
    address, host = node.get("NodeManagerAddress"), node.get("NodeName")
    return f"node {node['NodeID']} ({address}{'' if host == address else f', host {host}'})"
