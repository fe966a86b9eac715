"""Ray overhead of the whole job versus its slowest stage alone, and driver memory versus manifest
length.

    python benchmarks/pipeline.py [--quick] [--no-write] [--only overhead|memory] [--json PATH]

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
`processed_at` stamps, after the first quarter of the rows); start-up = wall - clips / steady.
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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the `tests` helpers

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pa_csv  # noqa: E402

from benchmarks.results import cpu_model, load_average, write_section  # noqa: E402
from tests.checkpoints import BASE  # noqa: E402
from vivit_batch.output.schema import VIEWS  # noqa: E402

CPUS = 2
OVERHEAD_TARGET = 0.10
MEMORY_TARGET = 1.2
VIDEO = dict(width=320, height=240, fps=30, codec="libx264", content="detailed")
DISTINCT_VIDEOS = 4


def cases(quick: bool) -> list[dict]:
    """What each overhead run labels; `alone_rows`: how many of the rows inference alone times."""
    tiny = dict(
        name="tiny (decode-bound)",
        checkpoint={},
        video_frames=96,
        rows=240 if quick else 1000,
        alone_rows=None,
        settings=[],
    )
    # Model-bound: one clip per inference batch, so the output has one time stamp per clip (a
    # base-size clip is 3137 tokens: batching clips gains nothing on a CPU).
    base = dict(
        name="base, 32 frames (model-bound)",
        checkpoint={**BASE, "num_frames": 32},
        video_frames=160,
        rows=4,
        alone_rows=2,
        settings=["resources.batch_size=1"],
    )
    if quick:  # the same width and depth, 8 frames (785 tokens): ~1/6 of the cost per clip
        base = {**base, "name": "base, 8 frames (model-bound)", "rows": 3}
        base["checkpoint"] = {**BASE, "num_frames": 8}
    return [tiny, base]


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


ROLES = ("decode actor", "inference actor", "driver", "other Ray")


TICK = os.sysconf("SC_CLK_TCK")
ACTOR_ROLES = {"DecodeStage": "decode actor", "InferenceStage": "inference actor"}


def process_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(children of each pid, CPU seconds (user + system) of each pid), from /proc."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return children, cpu


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return ""


def own_cpu() -> float:
    """CPU seconds of this process and of its own helper processes (the decode stage's isolated
    decoder: children whose command line names vivit_batch), not of Ray's."""
    children, cpu = process_table()
    helpers = [pid for pid in children.get(os.getpid(), []) if "vivit_batch" in command_line(pid)]
    todo, total = helpers, time.process_time()
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


class CpuSampler(threading.Thread):
    """CPU seconds of this process and all its descendants (with `address="local"`: GCS, raylet,
    their agents and every Ray worker), sampled from /proc, by role. A process inherits its
    parent's role, so the decode actor's isolated decoder counts as the decode actor, and this
    process's own helpers as the driver."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.stopping = threading.Event()
        self.roles: dict[int, str] = {}
        self.commands: dict[int, str] = {}

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)
        self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def sample(self) -> None:
        now = time.time()
        children, cpu = process_table()
        me = os.getpid()
        # This thread's own CPU, as a negative pseudo-process of the driver: sampling is not the
        # driver's work.
        found: dict[int, float] = {-1: -time.thread_time()}
        todo = [(me, "")]
        while todo:
            pid, parent_role = todo.pop()
            if pid not in cpu:
                continue
            found[pid] = cpu[pid]
            role = self.role(pid, me, parent_role)
            todo += [(child, role) for child in children.get(pid, [])]
        self.samples.append((now, found))

    def role(self, pid: int, me: int, parent_role: str) -> str:
        if pid == me:
            return "driver"
        if pid not in self.commands:
            self.commands[pid] = command_line(pid)
        if self.roles.get(pid) in ACTOR_ROLES.values():  # a worker stays an actor once it is one
            return self.roles[pid]
        command = self.commands[pid] = command_line(pid) or self.commands[pid]
        role = next((r for name, r in ACTOR_ROLES.items() if name in command), None)
        if role is None and parent_role in ACTOR_ROLES.values():
            role = parent_role
        if role is None:
            role = "driver" if parent_role == "driver" and "vivit_batch" in command else "other Ray"
        self.roles[pid] = role
        return role

    def at(self, when: float) -> dict[int, float]:
        """CPU seconds per process at `when`: interpolated between the samples either side of it
        for a process in both, else at its last sample before (exited processes included)."""
        state: dict[int, float] = {}
        previous = None
        for stamp, found in self.samples:
            if stamp > when and state:
                if previous is not None:
                    weight = (when - previous) / (stamp - previous)
                    for pid, cpu in found.items():
                        if pid in state:
                            state[pid] += weight * (cpu - state[pid])
                break
            state.update(found)
            previous = stamp
        return state

    def by_process(self, start: float, end: float, top: int = 8) -> list[tuple[str, str, float]]:
        """(role, command line, CPU seconds) of the processes that used the most CPU between two
        times."""
        before, after = self.at(start), self.at(end)
        used = [
            (
                self.roles.get(pid, "driver"),
                self.commands.get(pid, "")[:80],
                cpu - before.get(pid, 0),
            )
            for pid, cpu in after.items()
        ]
        return sorted(used, key=lambda item: -item[2])[:top]

    def used(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each role used between two times."""
        before, after = self.at(start), self.at(end)
        totals = dict.fromkeys(ROLES, 0.0)
        for pid, cpu in after.items():
            totals[self.roles.get(pid, "driver")] += cpu - before.get(pid, 0.0)
        return totals


def output_timeline(output: Path) -> list[tuple[float, int]]:
    """(time.time() of the `processed_at` stamp, rows) per distinct stamp (one per inference
    batch), in time order."""
    import pyarrow.dataset as ds

    stamps = ds.dataset(output).to_table(columns=["processed_at"]).column("processed_at")
    counts = pa.compute.value_counts(stamps).to_pylist()
    return sorted((c["values"].timestamp(), c["counts"]) for c in counts)


def steady_window(timeline: list[tuple[float, int]]) -> tuple[float, float, int] | None:
    """(start, end, rows output in between): from the stamp that completes the first quarter of
    the rows to the last stamp; None with fewer than two stamps."""
    total, done = sum(n for _, n in timeline), 0
    for index, (stamp, n) in enumerate(timeline):
        done += n
        if done >= total / 4:
            if index == len(timeline) - 1:
                return None
            return stamp, timeline[-1][0], total - done
    return None


def case_inputs(case: dict, directory: Path) -> None:
    """The case's checkpoint, videos and manifest."""
    from tests.checkpoints import make_checkpoint
    from tests.media import write_video

    make_checkpoint(directory / "checkpoint", **case["checkpoint"])
    videos = [
        write_video(directory / f"video{i}.mp4", num_frames=case["video_frames"] + i, **VIDEO)
        for i in range(DISTINCT_VIDEOS)
    ]
    write_manifest(directory / "manifest.csv", videos, case["rows"])


def run_case(case: dict, directory: Path) -> dict:
    from vivit_batch import job as pipeline
    from vivit_batch.config import load_config
    from vivit_batch.stages import DecodeStage, InferenceStage

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
    resources = pipeline.plan_resources(config, pipeline.cluster_shape())

    # Alone, before the pipeline: decode all rows; inference on the first half of its share.
    decode_stage = DecodeStage(replace(job.decode, threads=resources.decode_threads))
    decode_inputs = batches(manifest_rows(config), config.resources.decode_batch_size)
    decode_stage(decode_inputs[0])  # warm-up: imports, file cache (the actors pay it in start-up)
    decode_before, decoded = time_stage(decode_stage, decode_inputs)
    decoded_rows = pa.concat_tables(decoded).slice(0, case["alone_rows"] or case["rows"])
    inference_inputs = batches(decoded_rows, config.resources.batch_size)
    half = (len(inference_inputs) + 1) // 2
    inference_stage = InferenceStage(pipeline.inference_settings(job, "alone", resources))
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
    decode_after, _ = time_stage(decode_stage, decode_inputs)

    decode, inference = decode_before + decode_after, inference_before + inference_after
    actors = {"decode": resources.decode_actors, "inference": resources.inference_actors}
    alone = {"decode": decode, "inference": inference}
    stage_rates = {stage: alone[stage].rate * actors[stage] for stage in alone}
    slowest = min(stage_rates, key=stage_rates.get)
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
        cpu = {
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
        command = [sys.executable, __file__, *flags, "--case-inputs", str(index), str(directory)]
        subprocess.run(command, check=True, cwd=ROOT)
    start_ray()
    try:
        figures = [run_case(cases(quick)[i], Path(work) / str(i)) for i in indexes]
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(figures), flush=True)


def child(arguments: Callable[[Path], list[str]], what: str, attempts: int = 3):
    """Run this script in a subprocess, with `arguments(a fresh temporary directory)`, and return
    the JSON it prints. Tried again when it dies: on a shared machine, another session's
    `ray stop --force` kills every Ray on it, ours too."""
    for attempt in range(1, attempts + 1):
        with tempfile.TemporaryDirectory(prefix="vivit-pipeline-bench-") as work:
            command = [sys.executable, __file__, *arguments(Path(work))]
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
        runs += child(lambda work, w=which: [*flags, "--case-child", w, str(work)], names)
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


MEMORY_SETTINGS = [
    "resources.decode_batch_size=500",
    "resources.batch_size=500",
    "run.max_error_fraction=1",
]


def memory_inputs(directory: Path, sizes: tuple[int, ...]) -> None:
    """The tiny checkpoint, and for each size a manifest of that many files that do not exist."""
    from tests.checkpoints import make_checkpoint

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
    results = []
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


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def missed_note(r: dict) -> str:
    """Why a case's CPU-seconds overhead is above the target, from its own figures."""
    from vivit_batch.config import load_config

    c, stage = r["cpu"], r["slowest"]
    alone_runs = ", ".join(fmt(x, 3) for x in r[f"{stage}_alone_runs"])
    noise = (
        "On this shared machine the figure also moves between runs by about as much as the "
        f"target (the two runs of the stage alone here: {alone_runs} clips/s)."
    )
    alone = c["alone_per_clip"][stage]
    if stage != "decode":
        window = c.get("window")
        span = f" ({window[0]} clips in {window[1]:.1f} s)" if window else ""
        return (
            f"Missed: the {stage} actor used {pct(c['bottleneck_overhead'])} CPU per clip "
            f"against the stage alone over a short steady window{span}; Ray's per-call "
            f"cost is milliseconds (see the decode-bound case) against {alone:.1f} s of work "
            "per clip, so this is more likely the measurement's noise and sharing the cores "
            "(caches, memory bandwidth) with the driver and Ray's processes than Ray's own "
            "work. " + noise
        )
    resources = load_config(None, r["settings"]).resources
    batch = resources.decode_batch_size
    extra_ms = (c["per_clip"][f"{stage} actor"] - alone) * batch * 1000
    return (
        f"Missed: it is the {stage} actor's own extra CPU, {extra_ms:.1f} ms per call of "
        f"{batch} videos that take {1000 * alone:.1f} ms each alone: Ray's per-call work in "
        "the actor (task dispatch, block conversion, putting the output block in the object "
        "store) and sharing the cores with the driver and Ray's processes. Being per call, it "
        "should shrink with a larger `resources.decode_batch_size` and matter less for videos "
        "that take longer to decode (a 720p clip: about 200 ms, see the Decode section). " + noise
    )


def short_name(command: str, role: str) -> str:
    """A process's name for the table, from its command line."""
    if command.startswith("ray::"):
        return "`" + command.split()[0].removesuffix(".__init__") + "`"
    if "vivit_batch.video.isolation" in command:
        return f"isolated decoder of the {role}"
    words = command.split()
    if not words:
        return role
    name = words[0].rsplit("/", 1)[-1]
    if name.startswith("python") and len(words) > 1:
        name = words[1].rsplit("/", 1)[-1]
    return f"{name} ({role})"


def describe_plan(runs: list[dict]) -> str:
    plans = {
        json.dumps({k: v for k, v in r["resources"].items() if k != "decode_nodes"}) for r in runs
    }
    return "; ".join(sorted(plans))


def render_section(command: str, runs: list[dict], mem: list[dict], env: dict) -> str:
    lines = [
        "## Pipeline",
        "",
        f"`{command}`, {env['date']}, {env['cpu']} ({env['cores']} cores, "
        f"{env['memory_gib']:.0f} GiB), Python {env['python']}, torch {env['torch']}, "
        f"Ray {env['ray']}, PyAV {env['av']}. The machine is shared with other work: load "
        f"average {env['load_before']} before the run, {env['load_after']} after. Ray runs "
        f'locally (`address="local"`, `num_cpus={CPUS}`).',
    ]
    if runs:
        lines += [
            "",
            "### Ray overhead: end to end versus the slowest stage alone",
            "",
            f"`plan_resources`' plan: {describe_plan(runs)}.",
            "",
            "Each manifest's rows point, round robin, at 4 generated H.264 videos (320x240, "
            "30 fps, x264 defaults) under distinct video ids; one centre clip per video (the "
            "checkpoint's frames at stride 4, resized and centre-cropped to its image size). "
            "*alone*: the stage in this process over the same rows, in the pipeline's batches "
            "and with the pipeline's threads (decode timed before and after the pipeline run; "
            "inference half before, half after). *expected*: slowest stage alone x its actor "
            "count. *end to end*: clips / the pipeline's wall time (`run_job`; start-up "
            "included). *steady*: the pipeline's rate from the output's `processed_at` stamps, "
            "after the first quarter of the rows. *start-up*: wall - clips / steady. "
            "*in-pipeline*: the run report's per-stage rates (clips / the actors' busy "
            "seconds). Rates in clips/s, wall clock.",
            "",
            "| model | clips | decode alone | inference alone | expected | end to end | steady "
            "| overhead end to end | overhead steady | first output | start-up | wall "
            "| in-pipeline decode / inference |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in runs:
            lines.append(
                f"| {r['name']} | {r['clips']} | {fmt(r['decode_alone'])} "
                f"| {fmt(r['inference_alone'], 3)} | {fmt(r['expected'], 3)} ({r['slowest']}) "
                f"| {fmt(r['end_to_end'], 3)} | {fmt(r['steady'], 3)} "
                f"| {pct(r['overhead_end_to_end'])} | {pct(r['overhead_steady'])} "
                f"| {fmt(r['first_output_s'], 1)} s | {fmt(r['startup_s'], 1)} s "
                f"| {fmt(r['wall_s'], 1)} s "
                f"| {fmt(r['in_pipeline_decode'])} / {fmt(r['in_pipeline_inference'], 3)} |"
            )
        lines += [
            "",
            "The same runs in CPU seconds, which other work on the machine does not inflate "
            "the way it does wall time: each process's user + system time from /proc (this "
            "process, i.e. the driver, and all its descendants: GCS, raylet, agents, workers), "
            "per clip over the steady window. *alone*: the stage's CPU seconds per clip in this "
            "process. *core share*: the bottleneck actor's CPU seconds / wall seconds in the "
            "window (1.0 = a whole core; below it, other work took the rest). *CPU-bound rate*: "
            f"min(actors / actor CPU per clip, {CPUS} cores / all CPU per clip), for the "
            "pipeline and for the stages alone; their ratio is the steady-state overhead that "
            f"an otherwise idle {CPUS}-core machine would see. *fixed*: CPU seconds of the "
            "whole run beyond per-clip cost x clips (start-up and shutdown).",
            "",
            "| model | decode actor s/clip (alone) | inference actor s/clip (alone) "
            "| driver s/clip | other Ray s/clip | core share | bottleneck actor vs alone "
            "| CPU-bound rate (alone) | overhead | fixed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in runs:
            c = r["cpu"]
            if not c:
                lines.append(f"| {r['name']} | n/a (fewer than two output stamps) |")
                continue
            p, a = c["per_clip"], c["alone_per_clip"]
            lines.append(
                f"| {r['name']} | {p['decode actor']:.4f} ({a['decode']:.4f}) "
                f"| {p['inference actor']:.4f} ({a['inference']:.4f}) "
                f"| {p['driver']:.4f} | {p['other Ray']:.4f} | {c['bottleneck_share']:.2f} "
                f"| {pct(c['bottleneck_overhead'])} | {fmt(c['rate'], 3)} "
                f"({fmt(c['expected'], 3)}) | {pct(c['overhead'])} | {c['fixed_s']:.1f} s |"
            )
        lines += [
            "",
            "Target: steady-state overhead at most 10% (overhead = 1 - rate / expected). The "
            "wall-clock comparison is only as good as the machine is steady: where the slowest "
            "stage alone ran more than 10% apart before and after the pipeline run, it is "
            "inconclusive, and the CPU-seconds figure is the one to go by.",
        ]
        for r in runs:
            o = r["overhead_steady"]
            before, after = r[f"{r['slowest']}_alone_runs"]
            spread = abs(before - after) / ((before + after) / 2)
            verdict = "n/a" if o is None else ("met" if o <= OVERHEAD_TARGET else "missed")
            if o is not None and spread > OVERHEAD_TARGET:
                verdict = f"inconclusive ({r['slowest']} alone ran {100 * spread:.0f}% apart)"
            c = r["cpu"]
            cpu_verdict = "n/a"
            if c:
                cpu_verdict = "met" if c["overhead"] <= OVERHEAD_TARGET else "missed"
                if c["bottleneck_share"] < 0.5:
                    cpu_verdict += (
                        f" (but the bottleneck actor got only {c['bottleneck_share']:.2f} of a "
                        "core: per-second costs, such as Ray's background threads, then weigh "
                        "more per clip)"
                    )
            decode_runs = ", ".join(fmt(x) for x in r["decode_alone_runs"])
            lines.append(
                f"- {r['name']}: wall clock, steady {pct(o)}, {verdict}; in CPU seconds "
                f"{pct(c['overhead'] if c else None)}, {cpu_verdict}. With start-up, end to "
                f"end: {pct(r['overhead_end_to_end'])} over {r['clips']} clips. (Decode alone "
                f"before, after the pipeline: {decode_runs} clips/s; inference alone timed on "
                f"{r['inference_alone_clips']} clips; `prepare_job`, in the driver and outside "
                f"the wall time: {r['prepare_s']:.1f} s; settings: "
                f"{', '.join(r['settings']) or 'defaults'}.)"
            )
        lines += [
            "",
            "Start-up, the fixed cost: *first output* is the first `processed_at` stamp after "
            "`run_job` started; *start-up* (wall - clips / steady) and *fixed CPU* (as above) "
            "are from the table above. Whole-run CPU seconds by role, and the processes that "
            "used the most. `prepare_job` (checks, manifest scan, the checkpoint's config and "
            "weight shapes read from its files' headers) runs before `run_job` and is not in its "
            "wall time.",
            "",
            "| model | first output | start-up | fixed CPU | whole-run CPU s by role "
            "| top processes (CPU s) | `prepare_job` | driver peak RSS after `prepare_job` "
            "| load average during the case |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in runs:
            c = r["cpu"] or {}
            roles = ", ".join(f"{k} {v:.1f}" for k, v in c.get("whole_run", {}).items())
            top = "; ".join(
                f"{short_name(name, role)} {seconds:.1f}"
                for role, name, seconds in c.get("top_processes", [])[:5]
            )
            lines.append(
                f"| {r['name']} | {fmt(r['first_output_s'], 1)} s | {fmt(r['startup_s'], 1)} s "
                f"| {fmt(c.get('fixed_s'), 1)} s | {roles} | {top} | {r['prepare_s']:.1f} s "
                f"| {r['driver_peak_rss_after_prepare_mib']:.0f} MiB "
                f"| {r['load'][0]} / {r['load'][1]} |"
            )
        lines += ["", "Where the overhead and the fixed cost come from:"]
        for r in runs:
            c = r["cpu"]
            if not c:
                continue
            lines.append(
                f"- {r['name']}: in steady state the driver and Ray's own processes "
                f"(GCS, raylet, agents, Ray Data's internal actors, task workers) used "
                f"{c['ray_cores']:.2f} of a core; the bottleneck actor used "
                f"{pct(c['bottleneck_overhead'])} CPU per clip against the stage alone."
            )
            if c["overhead"] > OVERHEAD_TARGET:
                lines.append("  " + missed_note(r))
        lines.append(
            "- Start-up is mostly processes importing Python packages: each actor (Ray worker + "
            "torch + PyAV), the decode actor's isolated decoder (a second interpreter), Ray "
            "Data's `_StatsActor` and `_AutoscalingCoordinatorActor`, and the prestarted "
            "`ray::IDLE` workers; the inference actor also loads and hashes the checkpoint."
        )
        if len(runs) > 1:
            rss = [r["driver_peak_rss_after_prepare_mib"] for r in runs]
            lines.append(
                f"- `prepare_job` does not load the weights into the driver (it checks their "
                f"shapes from the files' headers): its peak RSS after `prepare_job` is "
                f"{rss[-1]:.0f} MiB with the {runs[-1]['name'].split(' (')[0]} model against "
                f"{rss[0]:.0f} MiB with the tiny one."
            )
    if mem:
        fresh = [m for m in mem if m["kind"] == "fresh"]
        small, large = fresh[0], fresh[-1]
        ratio = large["peak_mib"] / small["peak_mib"]
        verdict = "met" if ratio <= MEMORY_TARGET else "missed"

        def growth(m: dict) -> float:
            return m["peak_mib"] - m["peak_before_run_mib"]

        per_row = (growth(large) - growth(small)) * 2**20 / (large["rows"] - small["rows"])
        lines += [
            "",
            "### Driver memory versus manifest length",
            "",
            "One subprocess per run does `ray.init` + `prepare_job` + `run_job` and nothing else "
            "(the tiny checkpoint and the manifests come from another process). The rows name "
            "files that do not exist, so each becomes a `not_found` row; "
            f"{', '.join(f'`{x}`' for x in MEMORY_SETTINGS)}. *fresh*: into an empty output. "
            "*rerun*: the same manifest again over a copy of the fresh run's output, in that "
            "`run.mode` (`incremental` skips every committed row; `rerun_errors` relabels the "
            "error rows, here all of them, withdrawing the old ones first). Peak RSS of the driver "
            "process, MiB: VmHWM from /proc/self/status (not `ru_maxrss`, which Linux carries "
            "over from the parent through fork + exec, so that a child reports at least its "
            "parent's peak).",
            "",
            "| rows | run | after `ray.init` | after `prepare_job` | after `run_job` (peak) "
            "| growth in `run_job` | peak / fresh 1,000-row peak | rows written (replaced) "
            "| files | `run_job` time |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m in mem:
            lines.append(
                f"| {m['rows']:,} | {m['kind']} | {m['peak_after_init_mib']:.0f} "
                f"| {m['peak_before_run_mib']:.0f} | {m['peak_mib']:.0f} | {growth(m):+.0f} "
                f"| {m['peak_mib'] / small['peak_mib']:.2f}x "
                f"| {m['rows_written']:,} ({m['rows_replaced']:,}) | {m['files']} "
                f"| {m['run_s']:.1f} s |"
            )
        lines += [
            "",
            f"Target: peak with {large['rows']:,} rows at most {MEMORY_TARGET}x that with "
            f"{small['rows']:,} (fresh runs): {ratio:.2f}x, {verdict}. Growth of the peak "
            f"during `run_job` per extra row: {per_row:+.0f} bytes.",
        ]
        for m in mem:
            if m["kind"] == "fresh":
                continue
            extra = (growth(m) - growth(large)) * 2**20 / m["rows"]
            rerun_ratio = m["peak_mib"] / small["peak_mib"]
            lines.append(
                f"- {m['kind']} over {m['rows']:,} committed rows: {rerun_ratio:.2f}x the fresh "
                f"{small['rows']:,}-row peak "
                f"({'within' if rerun_ratio <= MEMORY_TARGET else 'above'} {MEMORY_TARGET}x); "
                f"{extra:+.0f} bytes per committed row over the fresh run's growth."
            )
        if any(
            m["kind"] != "fresh" and m["peak_mib"] / small["peak_mib"] > MEMORY_TARGET for m in mem
        ):
            lines.append(
                "- A rerun's driver holds state per committed row (`job.run_job`), all of "
                "it in Arrow arrays: the (video_id, status) table of every committed file "
                "(`Output.committed`), the ids to relabel and the ids to skip "
                "(`incremental`), and the tables of the files it withdraws rows from."
            )
        rows_per_file = large["rows"] / large["files"] if large["files"] else 0
        lines.append(
            f"- Files: the fresh {large['rows']:,}-row run wrote {large['files']} files, "
            f"{rows_per_file:,.0f} rows each on average, with `output.rows_per_file` at its "
            "default of 5,000 (documented as an upper bound)."
        )
    return "\n".join(lines) + "\n"


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
    command = "python benchmarks/pipeline.py" + (" --quick" if args.quick else "")
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
