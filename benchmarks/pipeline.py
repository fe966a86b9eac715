"""Ray overhead of the whole job versus its slowest stage alone, and driver memory versus manifest
length.

    python benchmarks/pipeline.py [--quick] [--no-write] [--only overhead|memory]

Overhead. For each model, a manifest of many rows pointing at a few generated videos (distinct
video ids) is labelled three ways, in one process, on a private local Ray (`address="local"`):

  decode alone     `DecodeStage` over all rows in this process, in the pipeline's decode batches,
                   with the pipeline's decoder threads: one decode actor. Timed before and after
                   the pipeline run; the mean counts.
  inference alone  `InferenceStage` over the rows decoded above, in the pipeline's inference
                   batches, with the torch threads the pipeline gives its inference actor: one
                   inference actor. Half the rows before the pipeline run, half after.
  pipeline         `pipeline.run_job` on the same manifest, with `plan_resources`' default plan.

Expected end-to-end rate = the slowest stage's clips/s x its actor count. The pipeline's rate is
reported two ways: over its whole wall time (start-up included), and in steady state (from the
output's `processed_at` stamps, after the first quarter of the rows); start-up is the wall time
minus clips / steady rate. Two models: the tiny test checkpoint (decode-bound) and a base-size
ViViT (hidden 768, 12 layers, 12 heads, MLP 3072, 224 px, 32 frames: model-bound).

Memory. One subprocess per manifest length (1,000 and 100,000 rows of files that do not exist, so
every row becomes a quick `not_found` error row) runs the whole job and reports the driver's peak
RSS (`ru_maxrss`).

Writes the "## Pipeline" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the `tests` helpers

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pa_csv  # noqa: E402

CPUS = 2
OVERHEAD_TARGET = 0.10
MEMORY_TARGET = 1.2
BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    tubelet_size=[2, 16, 16],
    num_labels=400,
)
VIDEO = dict(width=320, height=240, fps=30, codec="libx264", content="detailed")
DISTINCT_VIDEOS = 4


def cases(quick: bool) -> list[dict]:
    """What each overhead run labels. `frames` None: the checkpoint's 4 (tiny)."""
    tiny = dict(
        name="tiny (decode-bound)",
        checkpoint={},
        video_frames=96,
        rows=240 if quick else 800,
        settings=[],
    )
    # Model-bound: one clip per inference batch, so the output has one time stamp per clip (a
    # base-size clip is 3137 tokens, so batching clips gains nothing on a CPU).
    base = dict(
        name="base, 32 frames (model-bound)",
        checkpoint={**BASE, "num_frames": 32},
        video_frames=160,
        rows=4,
        settings=["resources.batch_size=1"],
    )
    if quick:  # the same width and depth, 8 frames (785 tokens): ~1/6 of the cost per clip
        base = {**base, "name": "base, 8 frames (model-bound)", "rows": 3}
        base["checkpoint"] = {**BASE, "num_frames": 8}
    return [tiny, base]


# ---------------------------------------------------------------------------------- overhead


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
    from vivit_batch.manifest import CSV_CONVERT, base_directory, with_ids

    table = pa_csv.read_csv(config.manifest.uri, convert_options=CSV_CONVERT)
    return with_ids(table, base_directory(config.manifest))


def batches(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(start, size) for start in range(0, table.num_rows, size)]


def time_stage(stage, inputs: list[pa.Table]) -> tuple[float, int, list[pa.Table]]:
    """Wall seconds, clips, outputs of `stage` over `inputs`, one call per batch."""
    outputs = []
    started = time.perf_counter()
    for batch in inputs:
        outputs.append(stage(batch))
    seconds = time.perf_counter() - started
    clips = sum(int(pa.compute.sum(t.column("_views")).as_py() or 0) for t in outputs)
    return seconds, clips, outputs


def inference_settings(job, resources, run_id: str):
    """What `pipeline.build_dataset` gives the inference actors."""
    from vivit_batch.stages import InferenceSettings

    config = job.config
    return InferenceSettings(
        model_source=config.model.source,
        revision=config.model.revision,
        processor=job.decode.processor,
        run_id=run_id,
        top_k=config.model.top_k,
        labels=job.labels,
        precision=config.model.precision,
        clips_per_forward=config.resources.clips_per_forward,
        torch_threads=None if resources.inference_gpus else int(resources.inference_cpus),
    )


def output_timeline(output: Path, started_at: str) -> list[tuple[float, int]]:
    """(seconds after the run started, rows) per distinct `processed_at` stamp (one per inference
    batch), in time order."""
    import pyarrow.dataset as ds

    stamps = ds.dataset(output).to_table(columns=["processed_at"]).column("processed_at")
    counts = pa.compute.value_counts(stamps).to_pylist()
    start = datetime.datetime.fromisoformat(started_at)
    timeline = [((c["values"] - start).total_seconds(), c["counts"]) for c in counts]
    return sorted(timeline)


def steady_rate(timeline: list[tuple[float, int]]) -> float | None:
    """Rows per second from the stamp that completes the first quarter of the rows to the last."""
    total = sum(n for _, n in timeline)
    done, first = 0, None
    for index, (_, n) in enumerate(timeline):
        done += n
        if done >= total / 4:
            first = index
            break
    if first is None or first == len(timeline) - 1:
        return None
    rows = sum(n for _, n in timeline[first + 1 :])
    seconds = timeline[-1][0] - timeline[first][0]
    return rows / seconds if seconds > 0 else None


def run_case(case: dict, work: Path) -> dict:
    from tests.checkpoints import make_checkpoint
    from tests.media import write_video
    from vivit_batch import pipeline
    from vivit_batch.config import load_config
    from vivit_batch.stages import DecodeStage, InferenceStage

    directory = work / re.sub(r"\W+", "-", case["name"])
    directory.mkdir()
    checkpoint = directory / "checkpoint"
    make_checkpoint(checkpoint, **case["checkpoint"])
    videos = [
        write_video(directory / f"video{i}.mp4", num_frames=case["video_frames"] + i, **VIDEO)
        for i in range(DISTINCT_VIDEOS)
    ]
    manifest = write_manifest(directory / "manifest.csv", videos, case["rows"])
    config = load_config(
        None,
        case["settings"],
        manifest_uri=str(manifest),
        output_uri=str(directory / "out"),
        model_source=str(checkpoint),
    )
    started = time.perf_counter()
    job = pipeline.prepare_job(config)
    prepare_s = time.perf_counter() - started
    resources = pipeline.plan_resources(config)
    decode_stage = DecodeStage(replace(job.decode, threads=resources.decode_threads))
    rows = manifest_rows(config)
    decode_inputs = batches(rows, config.resources.decode_batch_size)
    decode_stage(decode_inputs[0])  # warm-up: imports, file cache (the actors pay it in start-up)

    decode_before, clips, decoded = time_stage(decode_stage, decode_inputs)
    inference_inputs = batches(pa.concat_tables(decoded), config.resources.batch_size)
    half = (len(inference_inputs) + 1) // 2
    inference_stage = InferenceStage(inference_settings(job, resources, "alone"))
    inference_stage(inference_inputs[0].slice(0, 1))  # warm-up
    inference_before, inference_clips_before, _ = time_stage(
        inference_stage, inference_inputs[:half]
    )

    print(f"  {case['name']}: pipeline on {case['rows']} rows, {resources}", flush=True)
    result = pipeline.run_job(job)
    report = result.report

    inference_after, inference_clips_after, _ = time_stage(inference_stage, inference_inputs[half:])
    decode_after, _, _ = time_stage(decode_stage, decode_inputs)

    decode_rate = clips / ((decode_before + decode_after) / 2)
    inference_rate = (inference_clips_before + inference_clips_after) / (
        inference_before + inference_after
    )
    stage_rates = {
        "decode": decode_rate * resources.decode_actors,
        "inference": inference_rate * resources.inference_actors,
    }
    slowest = min(stage_rates, key=stage_rates.get)
    expected = stage_rates[slowest]
    timeline = output_timeline(directory / "out", report["started_at"])
    steady = steady_rate(timeline)
    wall = report["wall_seconds"]
    pipeline_clips = report["throughput"]["clips"]
    end_to_end = pipeline_clips / wall
    figures = {
        "name": case["name"],
        "rows": case["rows"],
        "clips": pipeline_clips,
        "status": report["counts"]["status"],
        "resources": report["resources"],
        "settings": case["settings"],
        "prepare_s": prepare_s,
        "decode_alone": decode_rate,
        "decode_alone_runs": [clips / decode_before, clips / decode_after],
        "inference_alone": inference_rate,
        "slowest": slowest,
        "expected": expected,
        "wall_s": wall,
        "end_to_end": end_to_end,
        "steady": steady,
        "first_output_s": timeline[0][0],
        "startup_s": wall - pipeline_clips / steady if steady else None,
        "in_pipeline_decode": report["throughput"]["decode_clips_per_second"],
        "in_pipeline_inference": report["throughput"]["inference_clips_per_second"],
        "overhead_end_to_end": 1 - end_to_end / expected,
        "overhead_steady": 1 - steady / expected if steady else None,
    }
    print(json.dumps(figures, indent=1), flush=True)
    return figures


def overhead(quick: bool) -> list[dict]:
    import ray

    ray.init(
        address="local",
        num_cpus=CPUS,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},  # as `vivit-batch run` does
    )
    try:
        with tempfile.TemporaryDirectory(prefix="vivit-pipeline-bench-") as tmp:
            return [run_case(case, Path(tmp)) for case in cases(quick)]
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------ memory


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(rows: int, work: str) -> None:
    """One full run over `rows` missing files; prints the driver's RSS figures as JSON."""
    import ray

    from tests.checkpoints import make_checkpoint
    from vivit_batch import pipeline
    from vivit_batch.config import load_config

    directory = Path(work)
    checkpoint = directory / "checkpoint"
    if not checkpoint.exists():
        make_checkpoint(checkpoint)
    manifest = directory / f"manifest-{rows}.csv"
    pa_csv.write_csv(
        pa.table(
            {
                "uri": [f"{directory}/missing/{i:07d}.mp4" for i in range(rows)],
                "video_id": [f"v{i:07d}" for i in range(rows)],
            }
        ),
        manifest,
    )
    ray.init(
        address="local", num_cpus=CPUS, include_dashboard=False, logging_level=logging.WARNING
    )
    config = load_config(
        None,
        [
            "resources.decode_batch_size=500",
            "resources.batch_size=500",
            "run.max_error_fraction=1",
        ],
        manifest_uri=str(manifest),
        output_uri=str(directory / f"out-{rows}"),
        model_source=str(checkpoint),
    )
    before_s = peak_rss_mib()
    job = pipeline.prepare_job(config)
    before_run = peak_rss_mib()
    started = time.perf_counter()
    result = pipeline.run_job(job)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    ray.shutdown()
    figures = {
        "rows": rows,
        "rows_written": result.report["rows_written"],
        "files": len(result.report["files"]),
        "peak_after_init_mib": before_s,
        "peak_before_run_mib": before_run,
        "peak_mib": peak,
        "run_s": seconds,
    }
    print("RESULT " + json.dumps(figures), flush=True)


def memory(sizes: tuple[int, ...]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="vivit-pipeline-mem-") as tmp:
        for rows in sizes:
            command = [sys.executable, __file__, "--memory-child", str(rows), tmp]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
                raise SystemExit(f"memory run with {rows} rows failed ({done.returncode})")
            figures = json.loads(lines[-1][len("RESULT ") :])
            print(f"  memory: {figures}", flush=True)
            results.append(figures)
    return results


# ----------------------------------------------------------------------------------- report


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def render_section(command: str, runs: list[dict], mem: list[dict], env: dict) -> str:
    lines = [
        "## Pipeline",
        "",
        f"`{command}`, {env['date']}, {env['cpu']} ({env['cores']} cores, "
        f"{env['memory_gib']:.0f} GiB; shared with other work: load average "
        f"{env['load_before']} before, {env['load_after']} after), Python {env['python']}, "
        f"torch {env['torch']}, Ray {env['ray']}, PyAV {env['av']}. Ray runs locally with "
        f"`num_cpus={CPUS}`; `plan_resources` gives 1 decode actor (1 CPU, 1 decoder thread) and "
        "1 inference actor (1 CPU, 1 torch thread).",
    ]
    if runs:
        lines += [
            "",
            "### Ray overhead: end to end versus the slowest stage alone",
            "",
            "Each manifest's rows point, round robin, at 4 generated H.264 videos (320x240, 30 fps, "
            "x264 defaults) under distinct video ids; one centre clip per video (the checkpoint's "
            "frames at stride 4, resized and centre-cropped to its image size). *alone*: the stage "
            "in this process over the same rows, in the pipeline's batches and with the "
            "pipeline's threads (decode timed before and after the pipeline run; inference half "
            "before, half after). *expected*: slowest stage alone x its actor count. "
            "*end to end*: clips / the pipeline's wall time (`run_job`; start-up included). "
            "*steady*: the pipeline's rate from the output's `processed_at` stamps, after the "
            "first quarter of the rows. *start-up*: wall - clips / steady. *in-pipeline*: the run "
            "report's per-stage rates (clips / the actors' busy seconds). Rates in clips/s.",
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
        lines += ["", "Target: steady-state overhead at most 10% (overhead = 1 - rate / expected):"]
        for r in runs:
            o = r["overhead_steady"]
            verdict = "n/a" if o is None else ("met" if o <= OVERHEAD_TARGET else "missed")
            decode_runs = ", ".join(fmt(x) for x in r["decode_alone_runs"])
            lines.append(
                f"- {r['name']}: steady {pct(o)}, {verdict}; end to end with start-up "
                f"{pct(r['overhead_end_to_end'])} over {r['clips']} clips (decode alone before, "
                f"after: {decode_runs} clips/s; `prepare_job` in the driver, not in the wall time: "
                f"{r['prepare_s']:.1f} s; settings: {', '.join(r['settings']) or 'defaults'})"
            )
    if mem:
        small, large = mem[0], mem[-1]
        ratio = large["peak_mib"] / small["peak_mib"]
        verdict = "met" if ratio <= MEMORY_TARGET else "missed"
        lines += [
            "",
            "### Driver memory versus manifest length",
            "",
            "One subprocess per manifest length runs `prepare_job` + `run_job` (tiny checkpoint; "
            "rows name files that do not exist, so each becomes a `not_found` row; "
            "`resources.decode_batch_size=500`, `resources.batch_size=500`, "
            "`run.max_error_fraction=1`). Peak RSS of the driver process "
            "(`ru_maxrss`), MiB.",
            "",
            "| rows | after `ray.init` | after `prepare_job` | after `run_job` (peak) "
            "| rows written | files | run time |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m in mem:
            lines.append(
                f"| {m['rows']:,} | {m['peak_after_init_mib']:.0f} | {m['peak_before_run_mib']:.0f} "
                f"| {m['peak_mib']:.0f} | {m['rows_written']:,} | {m['files']} "
                f"| {m['run_s']:.1f} s |"
            )
        lines += [
            "",
            f"Target: peak with {large['rows']:,} rows at most {MEMORY_TARGET}x that with "
            f"{small['rows']:,}: {ratio:.2f}x, {verdict}.",
        ]
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


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_section(path: Path, section: str) -> None:
    """Replace the "## Pipeline" section (up to the next "## ") or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Pipeline\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the Pipeline section of {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter manifests, 8-frame base")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    parser.add_argument("--only", choices=("overhead", "memory"), help="run one part")
    parser.add_argument("--memory-child", nargs=2, metavar=("ROWS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1])
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    load_before = load_average()
    started = time.perf_counter()
    runs = overhead(args.quick) if args.only != "memory" else []
    mem = memory((1_000, 100_000)) if args.only != "overhead" else []
    command = "python benchmarks/pipeline.py" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}"
    section = render_section(command, runs, mem, environment(load_before))
    print(section)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", section)


if __name__ == "__main__":
    main()
