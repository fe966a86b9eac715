"""One decode pool for both kinds of decode actor (`DecodePlacement`), on real Ray Data: the
first actors the pool starts get the NVDEC decoders' resources, the others the CPU decoders',
and batches go to both. Resources here are CPU shares (the cluster has no GPU): a GPU share is
the same remote argument."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import ray

from tests.helpers.plans import plan
from vivit_batch.job.cluster import DecodePlacement
from vivit_batch.job.pipeline import actor_pool

pytestmark = pytest.mark.slow


class ReportsItsCpus:
    """Tags each row with the CPUs Ray gave the actor that took it."""

    def __call__(self, batch: dict) -> dict:
        time.sleep(0.1)  # long enough that every actor of the pool is kept busy
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
        return {"id": batch["id"], "cpus": np.full(len(batch["id"]), cpus)}


@pytest.fixture()
def pool_ready_before_batches():
    """Ray Data dispatches as soon as one actor is up; on a loaded machine the others may start
    after every batch has gone. Here the pool's actors all start first."""
    context = ray.data.DataContext.get_current()
    waited = context.wait_for_min_actors_s
    context.wait_for_min_actors_s = 120
    yield
    context.wait_for_min_actors_s = waited


def test_a_decode_pool_starts_both_kinds_of_actor_and_feeds_both(
    ray_cluster, pool_ready_before_batches
):
    resources = dataclasses.replace(
        plan(cpus=16, gpus=1, nvdec=True),
        decode_actors=2,
        decode_cpus=0.2,
        gpu_decoders=1,
        gpu_decoder_gpus=0.0,  # no GPU here
        gpu_decoder_cpus=0.05,
    )
    pool = resources.decode_actors + resources.gpu_decoders
    rows = (
        ray.data.range(60, override_num_blocks=60)
        .materialize()  # every batch waiting: the actors are the bottleneck, as in a run
        .map_batches(
            ReportsItsCpus,
            compute=actor_pool(pool, pool),
            num_cpus=resources.decode_cpus,
            ray_remote_args_fn=DecodePlacement(resources),
            batch_size=1,
        )
        .take_all()
    )
    taken = [row["cpus"] for row in rows]
    assert sorted(row["id"] for row in rows) == list(range(60))
    assert set(taken) == {0.2, 0.05}
    assert taken.count(0.05) >= 5  # the NVDEC decoder took its share of the batches
