"""The driver's decisions without Ray, in milliseconds: resource planning, the output's
identity, and when a source counts as changed (which committed videos a run relabels:
test_skip_decision)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers.plans import plan
from vivit_batch.calibration import StageCosts
from vivit_batch.config import JobConfig, SamplingConfig, load_config
from vivit_batch.errors import ConfigError
from vivit_batch.job import PreparedJob
from vivit_batch.job.prepare import check_identity, identity_differences
from vivit_batch.job.resources import (
    GPU_PLAN_DECODE_CALLS_PER_ACTOR,
    GPU_PLAN_SMALLEST_DECODE_CALL,
    RAY_DATA_HEADROOM_CPUS,
    plans_from_costs,
)
from vivit_batch.manifest import ManifestSummary
from vivit_batch.model import CheckpointInfo, VivitConfig
from vivit_batch.output.schema import VERSION_COLUMNS
from vivit_batch.processor import ProcessorConfig
from vivit_batch.source_versions import changed_ids, source_differs, source_version
from vivit_batch.stages.decode import DecodeStageOptions


def test_cpu_cluster_splits_the_cores_between_decoding_and_torch():
    small = plan()
    assert (small.decode_actors, small.inference_actors, small.inference_threads) == (1, 1, 1)
    assert small.decode_cpus + small.inference_cpus == 1.0  # one CPU left to Ray Data
    assert (small.inference_gpus, small.inference_device) == (0.0, "cpu")
    big = plan(cpus=16)
    assert (big.decode_actors, big.inference_threads) == (8, 8)
    assert big.decode_cpus * 8 + big.inference_cpus == pytest.approx(15)


def test_gpu_cluster_one_inference_actor_per_gpu_decoding_on_the_rest():
    one = plan(cpus=16, gpus=1)
    assert (one.inference_actors, one.inference_gpus, one.inference_cpus) == (1, 1.0, 1.0)
    assert one.decode_actors == 15 and one.decode_cpus == pytest.approx(14 / 15)
    assert one.inference_device == "cuda"
    shared = plan("resources.inference_gpus=0.5", cpus=16, gpus=2)
    assert (shared.inference_actors, shared.inference_gpus) == (4, 0.5)


@pytest.mark.parametrize(
    ("gpus", "nvdec"), [(0, False), (1, False), (1, True)], ids=["cpu", "gpu", "gpu+nvdec"]
)
@pytest.mark.parametrize("cpus", [1, 2, 3, 16])
def test_plans_leave_ray_data_a_whole_cpu_on_small_machines(cpus, gpus, nvdec):
    """Ray Data's own tasks (the decode calls' repartition) ask for a whole CPU: plans whose
    least shares held part of it (1 CPU; 2 with a GPU, whose inference actor kept a whole one)
    made every run there wait for ever. The pools' shares shrink together to fit."""
    planned = plan(cpus=cpus, gpus=gpus, nvdec=nvdec)
    reserved = (
        planned.inference_actors * planned.inference_cpus
        + planned.decode_actors * planned.decode_cpus
        + planned.gpu_decoders * planned.gpu_decoder_cpus
    )
    assert cpus - reserved >= RAY_DATA_HEADROOM_CPUS - 1e-9
    assert reserved == pytest.approx(cpus - RAY_DATA_HEADROOM_CPUS, abs=1e-3)  # all the rest
    if gpus and cpus > 2:
        assert planned.inference_cpus == 1.0


def test_a_cluster_that_grows_keeps_the_least_shares_so_that_its_pools_wait_for_nodes():
    """An autoscaler adds nodes for actors that wait for CPUs: shares shrunk to fit a head of
    1 CPU would place every actor on it instead."""
    growing = plan(cpus=1, max_cpus=16)
    assert growing.decode_cpus >= 0.1 and growing.inference_cpus >= 0.1
    assert plan(cpus=1, max_cpus=1).decode_cpus == 0  # it may add no CPUs: fixed


def test_cpu_only_nodes_of_a_gpu_cluster_do_the_decoding():
    cluster = plan(cpus=40, gpus=2, cpu_nodes={"b": 16.0, "a": 16.0})
    assert cluster.decode_nodes == ["a", "b"] and cluster.decode_actors == 32
    assert cluster.inference_actors == 2


def test_inference_gpus_0_labels_on_the_cpu_of_a_gpu_cluster_with_planned_threads():
    cpu = plan("resources.inference_gpus=0", cpus=16, gpus=1, cpu_nodes={"a": 8.0})
    assert (cpu.inference_gpus, cpu.inference_device, cpu.inference_threads) == (0, "cpu", 8)
    assert cpu.decode_nodes == []  # no GPU actors to keep the CPU nodes apart for
    assert plan("resources.inference_gpus=0", "resources.inference_cpus=3", cpus=16, gpus=1)


def costs(decode_s: float | None, inference_s: float) -> StageCosts:
    return StageCosts(decode_s, inference_s, videos=3, clips=3, seconds=1.0)


def test_measured_costs_share_the_cores_rounded_up_to_whole_threads():
    """Decode-bound (the tiny test model: 18.8 ms to decode a clip, 1.4 ms to label it), model-
    bound (the base model on a CPU: 70 ms and 14 s) and balanced (120 ms each)."""
    tiny = plan(cpus=2, costs=costs(0.0188, 0.0014))
    assert (tiny.decode_actors, tiny.inference_actors, tiny.inference_threads) == (2, 1, 1)
    assert tiny.inference_share == pytest.approx(0.0014 / 0.0202, abs=1e-4)
    base = plan(cpus=2, costs=costs(0.07, 14.0))
    assert (base.decode_actors, base.inference_actors, base.inference_threads) == (1, 1, 2)
    even = plan(cpus=2, costs=costs(0.12, 0.12))
    assert (even.decode_actors, even.inference_actors, even.inference_threads) == (1, 1, 1)
    assert even.decode_cpus + even.inference_cpus == 1.0  # one CPU left to Ray Data
    wide = plan(cpus=64, costs=costs(0.07, 14.0))  # torch: 63.7 CPUs, at most 8 threads each
    assert (wide.inference_actors, wide.inference_threads, wide.decode_actors) == (8, 8, 1)
    decoding = plan(cpus=64, costs=costs(0.2, 0.05))  # 51.2 CPUs decode, 12.8 torch
    assert (decoding.decode_actors, decoding.inference_actors) == (52, 2)
    assert decoding.inference_threads == 7
    growing = plan(cpus=2, max_cpus=10, costs=costs(0.2, 0.05))  # a fifth of 10 CPUs
    assert (growing.max_inference_actors, growing.inference_threads) == (2, 1)


def test_without_a_measurement_the_cores_split_evenly():
    assert plan(cpus=16, costs=costs(None, 0.5)) == plan(cpus=16)
    assert plan(cpus=16).inference_share == 0.5


def test_short_manifests_get_fewer_decode_actors_and_smaller_decode_calls():
    """A decode actor for each 2 CPU seconds of decoding at most (what one costs to start)."""
    one = plan(cpus=16, costs=costs(0.2, 0.01), videos=1)
    assert (one.decode_actors, one.decode_batch_size) == (1, 1)
    few = plan(cpus=16, costs=costs(0.2, 0.01), videos=24)  # 4.8 s of decoding
    assert (few.decode_actors, few.decode_batch_size) == (2, 3)  # 4 calls each
    tiny = plan(cpus=2, costs=costs(0.0188, 0.0014), videos=24)  # 0.45 s: not worth a second
    assert (tiny.decode_actors, tiny.decode_batch_size) == (1, 6)
    many = plan(cpus=2, costs=costs(0.0188, 0.0014), videos=10_000)
    assert (many.decode_actors, many.decode_batch_size) == (2, 16)
    # 1.05 cores of decoding: a second actor would decode 5% of it, 0.7 s for 120 videos
    just_over = plan(cpus=2, costs=costs(0.126, 0.114), videos=120)
    assert (just_over.decode_actors, just_over.inference_threads) == (1, 1)
    assert plan(cpus=2, costs=costs(0.126, 0.114), videos=2000).decode_actors == 2
    assert plan("resources.decode_batch_size=5", videos=24).decode_batch_size == 5


def test_gpu_plans_give_each_decode_actor_many_short_calls():
    """Decoding is what a GPU plan waits for: 64 calls per actor, so each one's last are short,
    of 4 to 16 videos (smaller calls cost more to hand out; larger ones for long manifests,
    where each block costs driver memory), fewer where an actor would not get 4."""
    assert (GPU_PLAN_DECODE_CALLS_PER_ACTOR, GPU_PLAN_SMALLEST_DECODE_CALL) == (64, 4)
    with_nvdec = plan(cpus=16, gpus=1, nvdec=True, videos=10_000)  # 13 + 7 decode actors
    assert with_nvdec.decode_batch_size == 10_000 // (20 * 64) == 7
    assert plan(cpus=16, gpus=1, videos=1000).decode_batch_size == 4  # 15 CPU decode actors
    assert plan(cpus=16, gpus=1, videos=120).decode_batch_size == 2  # 4 calls each
    assert plan(cpus=16, gpus=1, videos=1_000_000).decode_batch_size == 16
    assert plan("resources.decode_batch_size=12", cpus=16, gpus=1).decode_batch_size == 12
    assert plan(cpus=16, videos=10_000).decode_batch_size == 16  # CPU plans: 4 calls per actor


def test_gpu_plans_do_not_depend_on_the_costs():
    for measured in (None, costs(0.0188, 0.0014), costs(0.07, 14.0)):
        one = plan(cpus=16, gpus=1, costs=measured)
        assert (one.inference_actors, one.inference_gpus, one.decode_actors) == (1, 1.0, 15)
        assert one.inference_share is None
        split = plan(cpus=40, gpus=2, cpu_nodes={"b": 16.0, "a": 16.0}, costs=measured)
        assert split.decode_nodes == ["a", "b"] and split.decode_actors == 32


def test_explicit_pools_win():
    explicit = plan("resources.decode_actors=3", "resources.inference_actors=2", cpus=8)
    assert (explicit.decode_actors, explicit.inference_actors) == (3, 2)
    assert "2 inference actor(s)" in explicit.describe()
    measured = costs(0.0188, 0.0014)
    threads = plan("resources.inference_cpus=3", cpus=8, costs=measured)
    assert (threads.inference_threads, threads.inference_actors, threads.decode_actors) == (3, 1, 8)
    sized = plan("resources.decode_actors=1", cpus=8, costs=measured)
    assert (sized.decode_actors, sized.inference_actors) == (1, 1)
    assert not plans_from_costs(
        load_config(
            None,
            [
                "resources.decode_actors=1",
                "resources.inference_actors=1",
                "resources.inference_cpus=2",
            ],
        ).resources
    )
    assert not plans_from_costs(load_config(None, ["resources.inference_gpus=1"]).resources)
    assert plans_from_costs(load_config(None, ["resources.inference_gpus=0"]).resources)


def test_a_fixed_cluster_keeps_its_pools_at_the_start_size():
    fixed = plan(cpus=16, gpus=2, cpu_nodes={"a": 8.0})
    assert (fixed.max_decode_actors, fixed.max_inference_actors) == (8, 2)
    assert (fixed.decode_actors, fixed.inference_actors) == (8, 2)
    assert "up to" not in fixed.describe()


def test_pools_grow_to_what_the_autoscalers_largest_cluster_holds():
    """A CPU-only head whose four 16-CPU GPU workers have not joined: a GPU plan (one
    inference actor waits for the first GPU), and at most one actor per GPU and decode actors
    on the CPUs the inference actors and Ray Data leave."""
    waiting = plan(cpus=8, cpu_nodes={"head": 8.0}, max_cpus=8 + 4 * 16, max_gpus=4)
    assert (waiting.inference_gpus, waiting.inference_actors) == (1.0, 1)
    assert waiting.max_inference_actors == 4
    assert (waiting.decode_actors, waiting.decode_cpus) == (8, 0.75)
    assert waiting.max_decode_actors == 89  # (72 - 1 headroom - 4 inference CPUs) // 0.75
    assert "1 (up to 4 as nodes join) inference actor(s)" in waiting.describe()
    cpu = plan(cpus=2, max_cpus=10)  # CPU workers to come: same actors, more of them
    assert (cpu.inference_actors, cpu.max_inference_actors, cpu.inference_threads) == (1, 5, 1)
    assert (cpu.decode_actors, cpu.max_decode_actors) == (1, 13)  # (10 - 1 - 5 * 0.5) // 0.5
    largest = cpu.max_inference_actors * cpu.inference_cpus + cpu.max_decode_actors * 0.5
    assert cpu.decode_cpus == 0.5 and largest <= 10 - 1


def test_explicit_maxima_and_sizes_bound_the_growth():
    sized = plan("resources.decode_actors=3", cpus=2, max_cpus=64)
    assert (sized.decode_actors, sized.max_decode_actors) == (3, 3)
    assert sized.max_inference_actors == 32
    capped = plan("resources.max_inference_actors=2", cpus=2, max_cpus=64)
    assert (capped.inference_actors, capped.max_inference_actors) == (1, 2)
    grows = plan("resources.max_decode_actors=6", "resources.max_inference_actors=3", cpus=2)
    assert (grows.max_decode_actors, grows.max_inference_actors) == (6, 3)  # a fixed cluster
    assert plan("resources.max_decode_actors=4", cpus=16).decode_actors == 4
    with pytest.raises(ConfigError, match="resources.decode_actors=4 is above resources.max_"):
        load_config(None, ["resources.decode_actors=4", "resources.max_decode_actors=2"])


def prepared(
    sha: str = "a" * 64, partition_by: str | None = None, new_version: bool = False
) -> PreparedJob:
    settings = [f"run.new_version={str(new_version).lower()}", "output.uri=out/"]
    if partition_by:
        settings.append(f"output.partition_by={partition_by}")
    config: JobConfig = load_config(None, settings, model_source="ckpt")
    checkpoint = CheckpointInfo("ckpt", None, Path("ckpt"), (), sha, ProcessorConfig(), None)
    decode = DecodeStageOptions(SamplingConfig(num_frames=4), ProcessorConfig())
    return PreparedJob(config, checkpoint, VivitConfig(), decode, {}, ManifestSummary())


def test_identity_differences_name_what_changed():
    recorded = prepared().identity
    assert identity_differences(None, recorded) == []
    assert identity_differences(recorded, prepared().identity) == []
    assert identity_differences(recorded, prepared(sha="b" * 64).identity) == ["weights_sha256"]
    old_layout = {k: v for k, v in recorded.items() if k != "partition_by"}  # before 0.1's run_date
    assert identity_differences(old_layout, prepared().identity) == []
    changed = prepared(partition_by="run_date").identity
    assert identity_differences(recorded, changed) == ["partition_by"]


def test_another_model_is_refused_unless_new_version():
    recorded = prepared().identity
    with pytest.raises(ConfigError, match="--new-version") as refused:
        check_identity(prepared(sha="b" * 64), recorded)
    assert "weights sha256 aaaaaaaaaaaa" in str(refused.value) and "new output" in str(
        refused.value
    )
    check_identity(prepared(sha="b" * 64, new_version=True), recorded)  # allowed: archived


def ids(*values: str) -> pa.Array:
    return pa.array(values, pa.string())


def versions_table(rows: dict[str, dict]) -> pa.Table:
    """Committed rows' ids and source versions."""
    schema = pa.schema([("video_id", pa.string()), *VERSION_COLUMNS.items()])
    return pa.Table.from_pylist([{"video_id": k, **v} for k, v in rows.items()], schema)


def test_a_source_changed_by_size_or_modification_time_is_relabelled(tmp_path):
    files = {name: tmp_path / f"{name}.mp4" for name in "abc"}
    for path in files.values():
        path.write_bytes(b"0123456789")
    versions = {name: source_version(str(path), None) for name, path in files.items()}
    files["a"].write_bytes(b"longer than before")  # a new upload
    later = files["b"].stat().st_mtime + 60
    os.utime(files["b"], (later, later))  # rewritten in place, same size
    uris = [str(p) for p in files.values()] + [str(tmp_path / "new.mp4")]
    manifest = pa.table({"video_id": ids("a", "b", "c", "new"), "uri": uris})
    assert changed_ids(manifest, versions_table(versions), None)["video_id"].to_pylist() == [
        "a",
        "b",
    ]
    before_versions = {**versions, "c": dict.fromkeys(VERSION_COLUMNS)}  # rows older than them
    changed = changed_ids(manifest, versions_table(before_versions), None)
    assert sorted(changed["video_id"].to_pylist()) == ["a", "b", "c"]


def test_an_etag_where_both_sides_have_one_decides_over_the_modification_time():
    then, now = (datetime(year, 1, 1, tzinfo=timezone.utc) for year in (2020, 2026))
    recorded = versions_table(
        {
            "touched": {"source_size": 10, "source_modified": then, "source_etag": '"1"'},
            "replaced": {"source_size": 10, "source_modified": now, "source_etag": '"1"'},
        }
    )
    current = {
        "touched": {"source_size": 10, "source_modified": now, "source_etag": '"1"'},
        "replaced": {"source_size": 10, "source_modified": now, "source_etag": '"2"'},
    }
    rows = versions_table(current).join(
        recorded.rename_columns(["video_id", *(f"recorded_{name}" for name in VERSION_COLUMNS)]),
        "video_id",
    )
    flags = dict(zip(rows["video_id"].to_pylist(), source_differs(rows).to_pylist(), strict=True))
    assert flags == {"touched": False, "replaced": True}
