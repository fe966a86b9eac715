"""Driver memory: the driver's peak over fresh labelling runs of many videos, labelled by one
Ray Data execution (as before `run.videos_per_part`) and in parts of one execution each.

    python -m benchmarks.driver_memory --videos 20000 --videos 80000 [--part 20000]
        [--parts-only 160000] [--work DIR] [--title TITLE] [--no-write]

Inputs (`benchmarks.scale_inputs`): the tiny test checkpoint and 4 tiny H.264 videos (64x48, 30
fps, about 1 s: one clip each), and for each N a Parquet manifest of N rows pointing at them
under ids of their own. Each run is the real command, `vivit-batch run --manifest M --output O
--model CHECKPOINT` into a fresh output, as a subprocess with an embedded local Ray and the
default configuration but `run.videos_per_part`: N (one execution: the baseline, the job as it
was) and --part (the job as it is). For each --videos N both runs (one only where N is not over
--part); for each --parts-only N the parted run alone, to show where the driver stays.

Measured: the driver's peak resident memory (VmHWM, `benchmarks.memory_sampler`), the command's
wall time and the run report's `wall_seconds`; every run must label all N videos. Ratios:
the parted run against the one-execution run of the same N (memory and time), and the driver's
growth per video between the smallest and largest N of each kind.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from benchmarks.memory_sampler import run_sampled
from benchmarks.results import load_average, machine, write_section
from benchmarks.scale_inputs import Video, make_shared_inputs, write_manifest
from benchmarks.startup import VIVIT_BATCH

TITLE = "Driver memory"
ONE_EXECUTION = "one execution"
IN_PARTS = "in parts"


def label(videos: int, per_part: int, work: Path, inputs: tuple[Path, list[Video]]) -> dict:
    """A fresh run over `videos` videos with `run.videos_per_part=per_part`, watched."""
    checkpoint, files = inputs
    directory = Path(tempfile.mkdtemp(prefix=f"n{videos}-p{per_part}-", dir=work))
    manifest = write_manifest(directory / "manifest.parquet", files, videos)
    output = directory / "out"
    command = [VIVIT_BATCH, "run", "--manifest", str(manifest), "--output", str(output)]
    command += ["--model", str(checkpoint), "--set", "run.run_id=driver-memory"]
    command += ["--set", f"run.videos_per_part={per_part}"]
    print(" ".join(command), file=sys.stderr, flush=True)
    sampler, wall = run_sampled(command, directory, directory / "log")
    report = json.loads((output / "_runs" / "driver-memory.json").read_text())
    if report["videos_written"] != videos:
        raise SystemExit(f"labelled {report['videos_written']} videos of {videos}")
    figures = {
        "videos": videos,
        "kind": ONE_EXECUTION if per_part >= videos else IN_PARTS,
        "per_part": per_part,
        "wall_s": wall,
        "run_job_s": report["wall_seconds"],
        "driver_mib": sampler.root_peak_mib(),
    }
    print(json.dumps(figures), file=sys.stderr, flush=True)
    return figures


def measure(args: argparse.Namespace, work: Path) -> list[dict]:
    inputs = make_shared_inputs(work)
    runs = []
    for n in sorted(args.videos):
        runs.append(label(n, n, work, inputs))
        if n > args.part:
            runs.append(label(n, args.part, work, inputs))
    return runs + [label(n, args.part, work, inputs) for n in sorted(args.parts_only)]


def section(runs: list[dict], title: str, command: str, environment: dict) -> str:
    rows = "\n".join(
        f"| {r['videos']:,} | {r['kind']} | {parts(r)} | {r['wall_s']:.0f} s | "
        f"{r['run_job_s']:.0f} s | {r['driver_mib']:.0f} |"
        for r in runs
    )
    return (
        f"## {title}\n\n`{command}`, {environment['date']}, {environment['cpu']} "
        f"({environment['cores']} cores, 24 GiB), Python {platform.python_version()}, ray "
        f"{version('ray')}, torch {version('torch')}, av {version('av')}; load average "
        f"{environment['load_before']} before, {load_average()} after (the machine is shared "
        "with other work).\n\n"
        "Fresh labelling runs of the real command (`vivit-batch run`, embedded local Ray, "
        "default configuration but `run.videos_per_part`) over N tiny videos (64x48, about 1 s, "
        "one clip each; the tiny test checkpoint): *one execution* (`run.videos_per_part=N`, "
        "the job before parts) and *in parts*. *Driver*: the command's peak resident memory "
        "(VmHWM), MiB; *run_job*: the run report's `wall_seconds`.\n\n"
        "| videos | run | parts | wall | run_job | driver |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n\n{ratios(runs)}\n"
    )


def parts(run: dict) -> str:
    count = -(-run["videos"] // run["per_part"])
    return "1" if count == 1 else f"{count} of {run['per_part']:,}"


def ratios(runs: list[dict]) -> str:
    lines = []
    one = {r["videos"]: r for r in runs if r["kind"] == ONE_EXECUTION}
    for run in runs:
        if run["kind"] == IN_PARTS and run["videos"] in one:
            base = one[run["videos"]]
            lines.append(
                f"- {run['videos']:,} videos in parts against one execution: driver peak "
                f"{run['driver_mib'] / base['driver_mib']:.2f}x, run_job "
                f"{run['run_job_s'] / base['run_job_s']:.2f}x."
            )
    for kind in (ONE_EXECUTION, IN_PARTS):
        lines.append(growth(kind, [r for r in runs if r["kind"] == kind]))
    return "\n".join(line for line in lines if line)


def growth(kind: str, runs: list[dict]) -> str:
    """The driver's peak per video between the `runs`' smallest and largest N."""
    if len(runs) < 2:
        return ""
    small, large = min(runs, key=lambda r: r["videos"]), max(runs, key=lambda r: r["videos"])
    per_video = (
        (large["driver_mib"] - small["driver_mib"]) * 2**20 / (large["videos"] - small["videos"])
    )
    return (
        f"- {kind}, {small['videos']:,} to {large['videos']:,} videos: the driver's peak "
        f"{small['driver_mib']:.0f} to {large['driver_mib']:.0f} MiB, {per_video:,.0f} bytes "
        "per video."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, action="append", default=[], help="both runs")
    parser.add_argument("--parts-only", type=int, action="append", default=[])
    parser.add_argument("--part", type=int, default=20_000, help="run.videos_per_part")
    parser.add_argument("--work", type=Path, help="where to generate (default: a temporary one)")
    parser.add_argument("--title", default=TITLE, help="the section of BENCHMARKS.md written")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if not args.videos and not args.parts_only:
        parser.error("give --videos N or --parts-only N")
    environment = machine(load_average())
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        runs = measure(args, Path(work))
    command = "python -m benchmarks.driver_memory " + shlex.join(sys.argv[1:])
    text = section(runs, args.title, command, environment)
    print(text)
    if not args.no_write:
        write_section(args.title, text)


if __name__ == "__main__":
    main()
