"""Ray overhead of the whole job versus its slowest stage alone, and driver memory versus manifest
length.

    python -m benchmarks.pipeline [--quick] [--no-write] [--only overhead|memory] [--json PATH]

Overhead. For each model, a manifest of many rows pointing at a few generated videos (distinct
video ids) is labelled, in a subprocess with a private local Ray (`address="local"`,
`num_cpus=2`), three ways:

  decode alone     `DecodeStage` over all rows in that process, in the pipeline's decode
                   batches, with the pipeline's decoder threads: one decode actor. Timed before
                   and after the pipeline run.
  inference alone  `InferenceStage` over rows decoded above, in the pipeline's inference
                   batches, with the torch threads the pipeline gives its inference actor: one
                   inference actor. Half before the pipeline run, half after.
  pipeline         `job.run_job` on the same manifest, with `plan_resources`' default plan.

Expected end-to-end rate = the slowest stage's clips/s x its actor count. The pipeline's rate is
taken over its whole wall time (start-up included) and in steady state (from the output's
`processed_at` stamps, after the first half of the rows: decoding runs ahead while the inference
actor starts, and the outputs of what it decoded then come fast); start-up = wall - clips /
steady.
Because the machine is shared, the same comparison is also made in CPU seconds: a sampler reads
/proc for the driver and every process under it (GCS, raylet, workers, the decode actor's
isolated decoder), by role. Models: the tiny test checkpoint (decode-bound) and a base-size ViViT
(hidden 768, 12 layers, 12 heads, MLP 3072, 224 px, 32 frames; --quick: 8 frames): model-bound.

Memory. One subprocess per run (1,000 and 100,000 rows, --quick: 20,000, of files that do not
exist, so every row becomes a quick `not_found` error row) does only the job and reports the
driver's peak RSS (VmHWM); the full mode also reruns the 100,000-row output in
`run.mode` incremental and rerun_errors.

Subprocesses that die are tried again (another session's `ray stop --force` kills every Ray on
the machine). Writes the "## Pipeline" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv

from benchmarks.cpu_sampler import CpuSampler, own_cpu
from benchmarks.pipeline_report import (
    CPUS,
    MEMORY_SETTINGS,
    fmt,
    pct,
    render_section,
)
from benchmarks.results import cpu_model, load_average, write_section
from vivit_batch.output.schema import VIEWS
from vivit_batch.testing.checkpoints import BASE

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported

ROOT = Path(__file__).resolve().parent.parent
THIS = [sys.executable, "-m", "benchmarks.pipeline"]
"""This benchmark in another process (run from ROOT)."""

VIDEO: dict[str, Any] = dict(width=320, height=240, fps=30, codec="libx264", content="detailed")
DISTINCT_VIDEOS = 4


def cases(quick: bool) -> list[dict]:
    """What each overhead run labels; `alone_rows`: how many of the rows the stages alone time.
    The three span the balance of the two stages: nearly all decoding (the tiny model), a
    third decoding (a 224 px, 32-frame model with the tiny one's two narrow layers, on 480p
    video) and nearly all torch (the base model's geometry with two of its twelve layers)."""
    tiny: dict[str, Any] = dict(
        name="tiny (decode-bound)",
        checkpoint={},
        video={**VIDEO, "num_frames": 96},
        rows=240 if quick else 6000,
        alone_rows=None if quick else 1000,
        settings=[],
    )
    between: dict[str, Any] = dict(
        name="224 px, 2 narrow layers (in between)",
        checkpoint={"image_size": 224, "num_frames": 32, "tubelet_size": [2, 16, 16]},
        video={**VIDEO, "width": 854, "height": 480, "num_frames": 240},
        rows=80 if quick else 300,
        alone_rows=40 if quick else 100,
        settings=[],
    )
    # Model-bound: one clip per inference batch, so the output has one time stamp per clip (a
    # base-size clip is 3137 tokens: batching clips gains nothing on a CPU).
    base: dict[str, Any] = dict(
        name="base geometry, 2 layers (model-bound)",
        checkpoint={**BASE, "num_hidden_layers": 2},
        video={**VIDEO, "num_frames": 160},
        rows=12 if quick else 40,
        alone_rows=4,
        settings=["resources.batch_size=1"],
    )
    return [tiny, between, base]


# ---------------------------------------------------------------------------------- overhead


def start_ray(attempts: int = 3) -> None:
    """A private local Ray (never another session's cluster). On a loaded machine the raylet can
    miss Ray's fixed 30 s start-up wait: try again."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(
                address="local",
                num_cpus=CPUS,
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},  # as `vivit-batch run`
            )
            return
        except Exception as error:  # Ray raises a bare Exception for this
            if attempt == attempts - 1:
                raise
            print(f"ray.init failed ({error}); retrying", file=sys.stderr, flush=True)
            ray.shutdown()


def write_manifest(path: Path, videos: list[Path], rows: int) -> Path:
    table = pa.table(
        {
            "uri": [str(videos[i % len(videos)]) for i in range(rows)],
            "video_id": [f"clip-{i:06d}" for i in range(rows)],
        }
    )
    pa_csv.write_csv(table, path)
    return path


def manifest_rows(config) -> pa.Table:
    from vivit_batch.manifest.read import CSV_CONVERT, base_directory, with_ids

    table = pa_csv.read_csv(config.manifest.uri, convert_options=CSV_CONVERT)
    return with_ids(table, base_directory(config.manifest))


def batches(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(start, size) for start in range(0, table.num_rows, size)]


@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0
    clips: int = 0

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.wall + other.wall, self.cpu + other.cpu, self.clips + other.clips)

    @property
    def rate(self) -> float:
        return self.clips / self.wall

    @property
    def cpu_per_clip(self) -> float:
        return self.cpu / self.clips


def time_stage(stage, inputs: list[pa.Table]) -> tuple[Timing, list[pa.Table]]:
    """Wall and CPU seconds (this process and its decoder process) and clips of `stage` over
    `inputs`, one call per batch."""
    outputs = []
    wall, cpu = time.perf_counter(), own_cpu()
    for batch in inputs:
        outputs.append(stage(batch))
    timing = Timing(time.perf_counter() - wall, own_cpu() - cpu)
    timing.clips = sum(int(pa.compute.sum(t.column(VIEWS)).as_py() or 0) for t in outputs)
    return timing, outputs


def output_timeline(output: Path) -> list[tuple[float, int]]:
    """(time.time() of the `processed_at` stamp, rows) per distinct stamp (one per inference
    batch), in time order."""
    import pyarrow.dataset as ds

    stamps = ds.dataset(output).to_table(columns=["processed_at"]).column("processed_at")
    counts = pa.compute.value_counts(stamps).to_pylist()
    return sorted((c["values"].timestamp(), c["counts"]) for c in counts)


def steady_window(timeline: list[tuple[float, int]]) -> tuple[float, float, int] | None:
    """(start, end, rows output in between): from the stamp that completes the first half of
    the rows to the last stamp; None with fewer than two stamps."""
    total, done = sum(n for _, n in timeline), 0
    for index, (stamp, n) in enumerate(timeline):
        done += n
        if done >= total / 2:
            if index == len(timeline) - 1:
                return None
            return stamp, timeline[-1][0], total - done
    return None


def case_inputs(case: dict, directory: Path) -> None:
    """The case's checkpoint, videos and manifest."""
    from vivit_batch.testing.checkpoints import make_checkpoint
    from vivit_batch.testing.media import write_video

    make_checkpoint(directory / "checkpoint", **case["checkpoint"])
    video = case["video"]
    videos = [
        write_video(directory / f"video{i}.mp4", **{**video, "num_frames": video["num_frames"] + i})
        for i in range(DISTINCT_VIDEOS)
    ]
    write_manifest(directory / "manifest.csv", videos, case["rows"])


def run_case(case: dict, directory: Path) -> dict:
    from vivit_batch import job as pipeline
    from vivit_batch.config import load_config
    from vivit_batch.stages.decode import DecodeStage
    from vivit_batch.stages.inference import InferenceStage

    config = load_config(
        None,
        case["settings"],
        manifest_uri=str(directory / "manifest.csv"),
        output_uri=str(directory / "out"),
        model_source=str(directory / "checkpoint"),
    )
    load_before = load_average()
    started = time.perf_counter()
    job = pipeline.prepare_job(config)
    prepare_s = time.perf_counter() - started
    driver_rss_after_prepare = peak_rss_mib()
    # The run's own plan (the stages' costs measured now; `run_job` plans from the same figures)
    resources, calibration = pipeline.planned_resources(job, case["rows"])

    # Alone, before the pipeline: decode all rows; inference on the first half of its share.
    decode_stage = DecodeStage(job.decode)
    alone_rows = case["alone_rows"] or case["rows"]
    decode_inputs = batches(manifest_rows(config).slice(0, alone_rows), resources.decode_batch_size)
    # warm-up: imports, file cache (the actors pay it in start-up)
    decode_stage.decode_all(decode_inputs[0])
    decode_before, decoded = time_stage(decode_stage.decode_all, decode_inputs)
    decoded_rows = pa.concat_tables(decoded)
    inference_inputs = batches(decoded_rows, config.resources.batch_size)
    half = (len(inference_inputs) + 1) // 2
    inference_stage = InferenceStage(pipeline.inference_options(job, "alone", resources))
    inference_stage(inference_inputs[0].slice(0, 1))  # warm-up
    inference_before, _ = time_stage(inference_stage, inference_inputs[:half])

    print(f"  {case['name']}: pipeline on {case['rows']} rows, {resources}", flush=True)
    sampler = CpuSampler()
    sampler.start()
    try:
        report = pipeline.run_job(job)
    finally:
        sampler.stop()

    # Alone, after: the other half of inference, and decode again.
    inference_after, _ = time_stage(inference_stage, inference_inputs[half:])
    decode_after, _ = time_stage(decode_stage.decode_all, decode_inputs)

    decode, inference = decode_before + decode_after, inference_before + inference_after
    actors = {"decode": resources.decode_actors, "inference": resources.inference_actors}
    alone = {"decode": decode, "inference": inference}
    stage_rates = {stage: alone[stage].rate * actors[stage] for stage in alone}
    slowest = min(stage_rates, key=lambda stage: stage_rates[stage])
    expected = stage_rates[slowest]

    clips = report.throughput.clips
    wall = report.wall_seconds
    run_start = datetime.datetime.fromisoformat(report.started_at).timestamp()
    run_end = run_start + wall
    timeline = output_timeline(directory / "out")
    window = steady_window(timeline)
    steady = window[2] / (window[1] - window[0]) if window else None
    end_to_end = clips / wall

    # CPU seconds per clip, in the steady window, by role; and the rate those would allow on
    # CPUS idle cores (each actor runs one thread, so it can use at most one core).
    cpu = {}
    if window:
        used = sampler.used(window[0], window[1])
        per_clip = {role: seconds / window[2] for role, seconds in used.items()}
        whole_run = sampler.used(run_start, run_end)
        total_per_clip = sum(per_clip.values())
        cpu_bound = min(
            actors["decode"] / per_clip["decode actor"] if per_clip["decode actor"] else math.inf,
            actors["inference"] / per_clip["inference actor"],
            CPUS / total_per_clip,
        )
        alone_bound = min(
            actors["decode"] / decode.cpu_per_clip,
            actors["inference"] / inference.cpu_per_clip,
            CPUS / (decode.cpu_per_clip + inference.cpu_per_clip),
        )
        bottleneck = f"{slowest} actor"
        capacity = CPUS / total_per_clip
        cpu = {
            "capacity": capacity,
            "capacity_ratio": steady / capacity if steady else None,
            "per_clip": per_clip,
            "alone_per_clip": {"decode": decode.cpu_per_clip, "inference": inference.cpu_per_clip},
            "bottleneck_share": used[bottleneck] / (window[1] - window[0]) / actors[slowest],
            "ray_cores": (used["driver"] + used["other Ray"]) / (window[1] - window[0]),
            "window": [window[2], window[1] - window[0]],
            "bottleneck_overhead": per_clip[bottleneck] / alone[slowest].cpu_per_clip - 1,
            "rate": cpu_bound,
            "expected": alone_bound,
            "overhead": 1 - cpu_bound / alone_bound,
            "fixed_s": sum(whole_run.values()) - total_per_clip * clips,
            "whole_run": whole_run,
            "top_processes": sampler.by_process(run_start, run_end),
        }
    figures = {
        "name": case["name"],
        "rows": case["rows"],
        "clips": clips,
        "status": report.counts["status"],
        "resources": report.resources,
        "calibration": calibration,
        "settings": case["settings"],
        "prepare_s": prepare_s,
        "decode_alone": decode.rate,
        "decode_alone_runs": [decode_before.rate, decode_after.rate],
        "inference_alone": inference.rate,
        "inference_alone_clips": inference.clips,
        "inference_alone_runs": [inference_before.rate, inference_after.rate],
        "slowest": slowest,
        "expected": expected,
        "wall_s": wall,
        "end_to_end": end_to_end,
        "steady": steady,
        "first_output_s": timeline[0][0] - run_start,
        "startup_s": wall - clips / steady if steady else None,
        "in_pipeline_decode": report.throughput.decode_clips_per_second,
        "in_pipeline_inference": report.throughput.inference_clips_per_second,
        "overhead_end_to_end": 1 - end_to_end / expected,
        "overhead_steady": 1 - steady / expected if steady else None,
        "cpu": cpu,
        "driver_peak_rss_after_prepare_mib": driver_rss_after_prepare,
        "load": [load_before, load_average()],
    }
    print(json.dumps(figures, indent=1), flush=True)
    return figures


def case_child(indexes: list[int], quick: bool, work: str) -> None:
    """Overhead cases on one private Ray; prints their figures as JSON."""
    import ray

    # Inputs from another process, so that this one (the driver) holds only the job.
    flags = ["--quick"] if quick else []
    for index in indexes:
        directory = Path(work) / str(index)
        directory.mkdir()
        command = [*THIS, *flags, "--case-inputs", str(index), str(directory)]
        subprocess.run(command, check=True, cwd=ROOT)
    start_ray()
    try:
        figures = [run_case(cases(quick)[i], Path(work) / str(i)) for i in indexes]
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(figures), flush=True)


def case_child_arguments(arguments: list[str], work: Path) -> list[str]:
    return [*arguments, str(work)]


def child(arguments: Callable[[Path], list[str]], what: str, attempts: int = 3):
    """Run this script in a subprocess, with `arguments(a fresh temporary directory)`, and return
    the JSON it prints. Tried again when it dies: on a shared machine, another session's
    `ray stop --force` kills every Ray on it, ours too."""
    for attempt in range(1, attempts + 1):
        with tempfile.TemporaryDirectory(prefix="vivit-pipeline-bench-") as work:
            command = [*THIS, *arguments(Path(work))]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode == 0 and lines:
            return json.loads(lines[-1][len("RESULT ") :])
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        print(f"{what}: attempt {attempt} failed ({done.returncode})", file=sys.stderr)
    raise SystemExit(f"{what} failed {attempts} times")


def overhead(quick: bool) -> list[dict]:
    """The cases, each in a subprocess of its own (quick: all in one, to save a Ray start)."""
    runs = []
    flags = ["--quick"] if quick else []
    indexes = list(range(len(cases(quick))))
    for group in [indexes] if quick else [[i] for i in indexes]:
        names = ", ".join(cases(quick)[i]["name"] for i in group)
        print(f"overhead: {names}", file=sys.stderr, flush=True)
        which = ",".join(map(str, group))
        runs += child(partial(case_child_arguments, [*flags, "--case-child", which]), names)
    for r in runs:
        print(
            f"  {r['name']}: end to end {r['end_to_end']:.3f}, steady {fmt(r['steady'], 3)}, "
            f"expected {r['expected']:.3f} clips/s; CPU overhead "
            f"{pct(r['cpu'].get('overhead'))}",
            file=sys.stderr,
            flush=True,
        )
    return runs


# ------------------------------------------------------------------------------------ memory


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM. Not `ru_maxrss`, which Linux carries over from the
    parent through fork + exec, so a child reports at least its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_inputs(directory: Path, sizes: tuple[int, ...]) -> None:
    """The tiny checkpoint, and for each size a manifest of that many files that do not exist."""
    from vivit_batch.testing.checkpoints import make_checkpoint

    make_checkpoint(directory / "checkpoint")
    for rows in sizes:
        pa_csv.write_csv(
            pa.table(
                {
                    "uri": [f"{directory}/missing/{i:07d}.mp4" for i in range(rows)],
                    "video_id": [f"v{i:07d}" for i in range(rows)],
                }
            ),
            directory / f"manifest-{rows}.csv",
        )


def memory_child(rows: int, mode: str, inputs: str, output: str) -> None:
    """One full run over the `rows`-row manifest in `inputs`, in `run.mode` `mode`; prints the
    driver's RSS figures as JSON. Nothing else happens in this process (the checkpoint and the
    manifest come from another), so the peaks compare like with like."""
    import ray

    from vivit_batch import job as pipeline
    from vivit_batch.config import load_config

    start_ray()
    config = load_config(
        None,
        [*MEMORY_SETTINGS, f"run.mode={mode}"],
        manifest_uri=str(Path(inputs) / f"manifest-{rows}.csv"),
        output_uri=output,
        model_source=str(Path(inputs) / "checkpoint"),
    )
    after_init = peak_rss_mib()
    job = pipeline.prepare_job(config)
    before_run = peak_rss_mib()
    started = time.perf_counter()
    report = pipeline.run_job(job)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    ray.shutdown()
    figures = {
        "rows": rows,
        "mode": mode,
        "rows_written": report.rows_written,
        "rows_replaced": report.rows_replaced,
        "files": len(report.files),
        "peak_after_init_mib": after_init,
        "peak_before_run_mib": before_run,
        "peak_mib": peak,
        "run_s": seconds,
    }
    print("RESULT " + json.dumps(figures), flush=True)


def memory(sizes: tuple[int, ...], reruns: tuple[str, ...]) -> list[dict]:
    """Fresh runs over each size; then, over the largest one's output, a rerun in each of the
    `reruns` modes (each on its own copy of that output)."""
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vivit-pipeline-mem-") as shared:
        inputs = Path(shared) / "inputs"
        inputs.mkdir()
        memory_inputs(inputs, sizes)

        def fresh(rows: int) -> Callable[[Path], list[str]]:
            def arguments(_: Path) -> list[str]:
                output = Path(shared) / f"out-{rows}"
                shutil.rmtree(output, ignore_errors=True)
                return ["--memory-child", str(rows), "incremental", str(inputs), str(output)]

            return arguments

        def rerun(rows: int, mode: str) -> Callable[[Path], list[str]]:
            def arguments(work: Path) -> list[str]:
                output = work / "out"
                shutil.copytree(Path(shared) / f"out-{rows}", output)
                return ["--memory-child", str(rows), mode, str(inputs), str(output)]

            return arguments

        def measure(rows: int, kind: str, arguments: Callable[[Path], list[str]]) -> dict:
            print(f"memory: {rows:,} rows, {kind}", file=sys.stderr, flush=True)
            figures = {**child(arguments, f"memory run, {rows} rows, {kind}"), "kind": kind}
            print(f"  {figures}", file=sys.stderr, flush=True)
            return figures

        # Peak RSS does not depend on what else runs, so the runs of a stage go side by side.
        with ThreadPoolExecutor() as pool:
            results += pool.map(lambda rows: measure(rows, "fresh", fresh(rows)), sizes)
            results += pool.map(
                lambda mode: measure(sizes[-1], f"rerun, {mode}", rerun(sizes[-1], mode)), reruns
            )
    return results


# ----------------------------------------------------------------------------------- report


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def environment(load_before: str) -> dict:
    import av
    import ray
    import torch

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "av": av.__version__,
        "load_before": load_before,
        "load_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter manifests, 8-frame base")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    parser.add_argument("--only", choices=("overhead", "memory"), help="run one part")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures there")
    parser.add_argument("--render", metavar="PATH", help="only render a --json file's figures")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--case-child", nargs=2, metavar=("INDEX", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--case-inputs", nargs=2, metavar=("INDEX", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        rows, mode, inputs, output = args.memory_child
        memory_child(int(rows), mode, inputs, output)
        return
    if args.case_inputs:
        case_inputs(cases(args.quick)[int(args.case_inputs[0])], Path(args.case_inputs[1]))
        return
    if args.case_child:
        indexes = [int(i) for i in args.case_child[0].split(",")]
        case_child(indexes, args.quick, args.case_child[1])
        return
    if args.render:
        raw = json.loads(Path(args.render).read_text())
        section = render_section(raw["command"], raw["overhead"], raw["memory"], raw["environment"])
        print(section)
        if not args.no_write:
            write_section("Pipeline", section)
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    load_before = load_average()
    started = time.perf_counter()
    runs = overhead(args.quick) if args.only != "memory" else []
    sizes = (1_000, 20_000 if args.quick else 100_000)
    reruns = () if args.quick else ("incremental", "rerun_errors")
    mem = memory(sizes, reruns) if args.only != "overhead" else []
    command = "python -m benchmarks.pipeline" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}"
    env = environment(load_before)
    if args.json:
        raw = {"command": command, "overhead": runs, "memory": mem, "environment": env}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    section = render_section(command, runs, mem, env)
    print(section)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if not args.no_write:
        write_section("Pipeline", section)


if __name__ == "__main__":
    main()
