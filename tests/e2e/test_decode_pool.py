"""The decode pool on real Ray Data. One pool for both kinds of decode actor
(`DecodePlacement`): the first actors the pool starts get the NVDEC decoders' resources, the
others the CPU decoders', and batches go to both. Resources here are CPU shares (the cluster has
no GPU): a GPU share is the same remote argument. And the manifest reaches it in blocks of one
decode call's videos (`in_decode_calls`), whatever blocks the read made."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import ray

from tests.helpers.plans import plan
from vivit_batch.config import load_config
from vivit_batch.job.cluster import DecodePlacement
from vivit_batch.job.pipeline import actor_pool, in_decode_calls
from vivit_batch.manifest.read import read_dataset

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


def test_the_manifest_reaches_the_decode_pool_in_blocks_of_one_call(ray_cluster, tmp_path):
    """Ray Data hands a block to one decode actor whole: the read's blocks (a few per CPU,
    whatever the manifest's length) are split into calls' worth, in order, none lost."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("uri\n" + "".join(f"/videos/{i}.mp4\n" for i in range(300)))
    section = load_config(None, [f"manifest.uri={manifest}", "output.uri=/unused"]).manifest
    rows = read_dataset(section, None, num_cpus=0, tasks=1)
    assert max(block.num_rows for block in blocks(rows)) > 4  # what the pool was fed before
    resources = plan("resources.decode_batch_size=4", cpus=16, gpus=1)
    split = blocks(in_decode_calls(rows, resources))
    assert max(block.num_rows for block in split) <= 4
    uris = [uri for block in split for uri in block.column("uri").to_pylist()]
    assert uris == [f"/videos/{i}.mp4" for i in range(300)]


def blocks(dataset: ray.data.Dataset) -> list:
    return ray.get(dataset.to_arrow_refs())
