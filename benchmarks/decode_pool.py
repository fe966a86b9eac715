"""How much of a GPU plan's decode pool a run gets. Ray Data hands each input block to one
decode actor whole, and each actor's last calls are the run's tail: what the pool gives depends
on the blocks the manifest arrives in, on the videos per decode call, and on how unequal its
actors are.

    python -m benchmarks.decode_pool [--quick] [--no-write]

The pool is the job's own: `plan_resources` for 16 cores and 1 GPU (with NVDEC: 13 CPU decode
actors and 7 NVDEC ones; `decode.device=cpu`: 15 CPU ones), placed by `DecodePlacement`, in
`actor_pool`, on embedded Ray with 16 logical CPUs and 1 logical GPU, fed a CSV manifest read
by the job's reader (`read_dataset`: about two blocks per CPU, whatever the manifest's length).
Its actors are simulated, so that this machine's 2 cores carry 20 of them: each sleeps its
kind's time per video. CPU decoders at 2.5 clips/s each (what the lent H200's ran at,
BENCHMARKS.md's GPU section); NVDEC decoders at 10 clips/s each (not yet measured: 128 decoded
720p frames per clip at 1,280 frames/s per engine), and 5 and 20 for the spread.

Each case runs the pool three ways: as the job fed it before (the read's blocks; calls of 16
videos, fewer when the manifest gives an actor fewer than 4), in blocks of one call's videos
(`in_decode_calls`) with calls of that size, and as the job feeds it now (blocks of one call,
in a GPU plan calls of 4 to 16 videos, small enough to give each actor 64: 4 for 1,000 and for
4,000 videos). And below the smallest call a GPU plan makes: 1 video a call for 1,000 videos,
3 for 4,000 (what 64 calls per actor alone would give).

Baseline: the pool's summed rate (every actor busy from the first call's start to the last
call's end); the ratio is what dispatch and the tail leave of it. Also: the NVDEC decoders'
share of the videos against their share of the summed rate, and the idle tail (from the
earliest actor's last call's end to the run's end). Writes the "## Decode pool" section.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import ray

from benchmarks.results import load_average, machine, write_section
from tests.helpers.plans import plan
from vivit_batch.config import load_config
from vivit_batch.job.cluster import DecodePlacement
from vivit_batch.job.pipeline import actor_pool, in_decode_calls
from vivit_batch.job.resources import Resources, decode_batch_size
from vivit_batch.manifest.read import read_dataset

CPU_CLIPS_PER_S = 2.5
NVDEC_CLIPS_PER_S = 10.0
SMALLER_CALLS = ((1000, 1), (4000, 3))
"""(videos, videos per call) below a GPU plan's smallest call, with NVDEC beside the CPU."""


class SimulatedDecoder:
    """A decode actor of the kind its placement made it (a share of a GPU: NVDEC), taking its
    kind's time per video; each row says its kind and its call's start, end and actor."""

    def __init__(self, seconds_per_video: dict[str, float]):
        self.kind = "nvdec" if ray.get_gpu_ids() else "cpu"
        self.seconds = seconds_per_video[self.kind]

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.time()
        time.sleep(self.seconds * batch.num_rows)
        call = (started, time.time(), float(id(self)))
        return (
            batch.select(["uri"])
            .append_column("kind", pa.array([self.kind] * batch.num_rows))
            .append_column("call", pa.array([call] * batch.num_rows))
        )


def pool_plan(device: str, rows: int) -> Resources:
    return plan(f"decode.device={device}", cpus=16, gpus=1, nvdec=True, videos=rows)


def manifest(directory: str, rows: int) -> ray.data.Dataset:
    path = Path(directory) / f"manifest-{rows}.csv"
    path.write_text("uri\n" + "".join(f"/videos/{i}.mp4\n" for i in range(rows)))
    section = load_config(None, [f"manifest.uri={path}", "output.uri=/unused"]).manifest
    return read_dataset(section, None, num_cpus=0, tasks=1)


def feeds(resources: Resources, rows: int) -> list[tuple[bool, int]]:
    """(blocks of one call's videos, videos per call): as the job fed the pool before (the
    read's blocks, the CPU plans' call size), that size in blocks of one call, and now."""
    cpu_rule = decode_batch_size(rows, resources.decode_actors + resources.gpu_decoders, False)
    return [(False, cpu_rule), (True, cpu_rule), (True, resources.decode_batch_size)]


def run(
    resources: Resources, rows: ray.data.Dataset, nvdec_rate: float, split: bool, call_size: int
) -> dict:
    """One pass of the pool over `rows`, in the read's blocks or `split` by `in_decode_calls`,
    `call_size` videos per call."""
    actors = resources.decode_actors + resources.gpu_decoders
    resources = dataclasses.replace(resources, decode_batch_size=call_size)
    if split:
        rows = in_decode_calls(rows, resources)
    decoded = rows.map_batches(
        SimulatedDecoder,
        fn_constructor_kwargs={
            "seconds_per_video": {"cpu": 1 / CPU_CLIPS_PER_S, "nvdec": 1 / nvdec_rate}
        },
        compute=actor_pool(actors, actors),
        num_cpus=resources.decode_cpus,
        ray_remote_args_fn=DecodePlacement(resources),
        batch_size=call_size,
        batch_format="pyarrow",
    )
    table = pa.concat_tables(ray.get(decoded.to_arrow_refs()))
    count = table.num_rows
    calls = {tuple(call) for call in table.column("call").to_pylist()}
    first, last = min(call[0] for call in calls), max(call[1] for call in calls)
    last_of_each: dict[float, float] = {}
    for _, end, actor in calls:
        last_of_each[actor] = max(end, last_of_each.get(actor, 0.0))
    rate = resources.decode_actors * CPU_CLIPS_PER_S + resources.gpu_decoders * nvdec_rate
    return {
        "rows": count,
        "blocks": "one call's" if split else "as read",
        "cpu_decoders": resources.decode_actors,
        "nvdec_decoders": resources.gpu_decoders,
        "nvdec_clips_per_s": nvdec_rate if resources.gpu_decoders else None,
        "call_size": call_size,
        "seconds": last - first,
        "ideal_seconds": count / rate,
        "of_summed_rate": count / rate / (last - first),
        "nvdec_share": table.column("kind").to_pylist().count("nvdec") / count,
        "nvdec_share_of_rate": resources.gpu_decoders * nvdec_rate / rate,
        "idle_tail_s": last - min(last_of_each.values()),
    }


def cases(quick: bool) -> list[tuple[str, int, float]]:
    """(decode.device, manifest rows, NVDEC clips/s per actor) to run."""
    if quick:
        return [("auto", 1000, NVDEC_CLIPS_PER_S)]
    return [
        ("auto", 1000, NVDEC_CLIPS_PER_S),
        ("auto", 4000, NVDEC_CLIPS_PER_S),
        ("cpu", 1000, NVDEC_CLIPS_PER_S),
        ("auto", 1000, 5.0),
        ("auto", 1000, 20.0),
    ]


def render(figures: dict) -> str:
    m = figures["machine"]
    lines = [
        "## Decode pool",
        "",
        f"`python -m benchmarks.decode_pool`, {m['date']}, {m['cpu']} ({m['cores']} cores; "
        f"load {m['load_before']} before, {m['load_after']} after), Ray {ray.__version__}.",
        "",
        "A GPU plan's decode pool (16 cores, 1 GPU) on embedded Ray with 16 logical CPUs and 1 "
        f"logical GPU: CPU decode actors at {CPU_CLIPS_PER_S} clips/s each, NVDEC ones at the "
        "rate given, simulated (each sleeps its kind's time per video), placed by "
        "`DecodePlacement` in the job's `actor_pool`, fed a CSV manifest read by the job's "
        "reader: its blocks as read (before), or `in_decode_calls`' blocks of one call's "
        "videos, at the CPU plans' call size and at the GPU plans' (now). Baseline: the "
        "pool's summed rate (the decoders' clips/s added up). Seconds "
        "from the first call's start to the last call's end; idle tail: from the earliest "
        "actor's last call's end to the run's end.",
        "",
        "| videos | decoders (CPU + NVDEC at clips/s) | blocks | videos per call | seconds | "
        "at the summed rate | of the summed rate | NVDEC's share (of the rate) | idle tail s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures["runs"]:
        nvdec = (
            f" + {f['nvdec_decoders']} at {f['nvdec_clips_per_s']:g}" if f["nvdec_decoders"] else ""
        )
        share = f"{f['nvdec_share']:.2f} ({f['nvdec_share_of_rate']:.2f})" if nvdec else "-"
        lines.append(
            f"| {f['rows']} | {f['cpu_decoders']}{nvdec} | {f['blocks']} | {f['call_size']} | "
            f"{f['seconds']:.1f} | {f['ideal_seconds']:.1f} | {f['of_summed_rate']:.2f}x | "
            f"{share} | {f['idle_tail_s']:.1f} |"
        )
    runs = figures["runs"]
    lines.append("")
    for before, now in zip(runs[::3], runs[2::3], strict=True):
        lines.append(
            f"- {before['rows']} videos, {before['cpu_decoders']} CPU decoders"
            + (
                f" + {before['nvdec_decoders']} NVDEC at {before['nvdec_clips_per_s']:g} clips/s"
                if before["nvdec_decoders"]
                else ""
            )
            + f": {before['of_summed_rate']:.2f}x of the summed rate before, "
            f"{now['of_summed_rate']:.2f}x now ({before['seconds'] / now['seconds']:.2f}x as fast)."
        )
    lines += ["", "Below the smallest call (4 videos) a GPU plan makes:", ""]
    lines += [
        f"- {f['rows']} videos, {f['call_size']} a call: {f['of_summed_rate']:.2f}x of the "
        f"summed rate ({f['seconds']:.1f} s)."
        for f in figures["smaller_calls"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 videos, NVDEC beside")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = parser.parse_args()
    load_before = load_average()
    ray.init(address="local", num_cpus=16, num_gpus=1, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 600
    runs, smaller = [], []
    with tempfile.TemporaryDirectory(prefix="vivit-decode-pool-") as directory:
        for device, rows, nvdec_rate in cases(args.quick):
            resources = pool_plan(device, rows)
            for split, call_size in feeds(resources, rows):
                dataset = manifest(directory, rows)
                runs.append(run(resources, dataset, nvdec_rate, split, call_size))
                print(runs[-1], flush=True)
        for rows, call_size in SMALLER_CALLS[:1] if args.quick else SMALLER_CALLS:
            dataset = manifest(directory, rows)
            smaller.append(
                run(pool_plan("auto", rows), dataset, NVDEC_CLIPS_PER_S, True, call_size)
            )
            print(smaller[-1], flush=True)
    ray.shutdown()
    figures = {"machine": machine(load_before), "runs": runs, "smaller_calls": smaller}
    section = render(figures)
    print(section)
    if not args.no_write:
        write_section("Decode pool", section)


if __name__ == "__main__":
    main()
