"""Start-up: from the command to the first committed row of a one-video manifest, and the CPU
seconds a run costs beyond its clips, phase by phase.

    python -m benchmarks.startup [--runs N] [--no-write]

Inputs, made once by another process: a 10 s 854x480 H.264 video, a one-row CSV manifest, and
a local checkpoint with the tiny test model's two narrow layers at 224 px and 32 frames.

The command: `vivit-batch run --manifest M --output O --model C` in a subprocess (a fresh
embedded Ray each time), N times: seconds to the first committed data file (polled every 50 ms)
and to the command's exit, and the CPU seconds of the command and every process under it, from
/proc. *Fixed*: those CPU seconds less the clip's own cost (decode + inference per clip, as the
run measured them).

The phases: the steps of `vivit-batch run` in a subprocess of this script that times them itself
(imports, `prepare_job`, Ray's start, the plan, the last two from the run's log records) while
this script watches the processes: when each actor's process took its title, when the decode
actor's decoding process started (its zygote) and forked its first worker (the first decode),
when the inference actor was ready (its report's `start_s`: device, model load and checks), and
when the first data file was committed. CPU seconds of all the processes between those moments.

Writes the "## Start-up" section of BENCHMARKS.md (`--no-write`: print only).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from string import Template

from benchmarks.cpu_sampler import ACTOR_ROLES, CpuSampler, short_name
from benchmarks.results import load_average, machine, write_section

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).with_name("templates") / "startup.md"
THIS = [sys.executable, "-m", "benchmarks.startup"]
VIVIT_BATCH = str(Path(sys.executable).with_name("vivit-batch"))
FIRST_ROW_TARGET_S = 10.0
FIXED_CPU_TARGET_S = 15.0
ZYGOTE = "vivit_batch.video.worker import zygote_main"
"""the decoding processes' command line: the zygote's, and its forked workers' (the decode
actor's, and the cost measurement's in the driver)"""


def make_inputs(directory: Path) -> None:
    from vivit_batch.testing.checkpoints import make_checkpoint
    from vivit_batch.testing.media import write_video

    make_checkpoint(
        directory / "checkpoint", image_size=224, num_frames=32, tubelet_size=[2, 16, 16]
    )
    video = write_video(
        directory / "video.mp4", num_frames=300, width=854, height=480, content="detailed"
    )
    (directory / "manifest.csv").write_text(f"uri\n{video}\n")


def arguments(inputs: Path, output: Path) -> list[str]:
    return [
        "--manifest",
        str(inputs / "manifest.csv"),
        "--output",
        str(output),
        "--model",
        str(inputs / "checkpoint"),
    ]


def first_file(output: Path) -> bool:
    return bool(glob.glob(f"{output}/**/*.parquet", recursive=True))


def run_report(output: Path) -> dict:
    [report] = (output / "_runs").glob("*.json")
    return json.loads(report.read_text())


def clip_cost(report: dict) -> float:
    """CPU seconds of the clips themselves: clips x what the run measured per clip."""
    measured = report["calibration"]
    return report["throughput"]["clips"] * ((measured["decode_s"] or 0) + measured["inference_s"])


# ----------------------------------------------------------------------------- the command


def command_run(inputs: Path, output: Path) -> dict:
    """`vivit-batch run` once: seconds to the first committed file and to exit, CPU seconds."""
    shutil.rmtree(output, ignore_errors=True)
    sampler = CpuSampler(interval=0.1)
    sampler.start()
    started = time.time()
    process = subprocess.Popen(
        [VIVIT_BATCH, "run", *arguments(inputs, output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    first: float | None = None
    while process.poll() is None:
        if first is None and first_file(output):
            first = time.time() - started
        time.sleep(0.05)
    ended = time.time()
    sampler.stop()
    if process.returncode != 0:
        _, errors = process.communicate()
        raise SystemExit(f"vivit-batch run failed: {errors.decode()[-2000:]}")
    report = run_report(output)
    cpu = sum(sampler.used(started, ended + 1).values())
    return {
        "first_row_s": first,
        "exit_s": ended - started,
        "cpu_s": cpu,
        "fixed_cpu_s": cpu - clip_cost(report),
        "plan": report["resources"],
    }


# ------------------------------------------------------------------------------ the phases


class LogTimes(logging.Handler):
    """When the run logged each of its messages."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.times.append((record.created, record.getMessage()))

    def first(self, fragment: str) -> float | None:
        return next((when for when, message in self.times if fragment in message), None)


def phases_child(inputs: str, output: str, started: float) -> None:
    """The steps of `vivit-batch run`, timed; prints their times (time.time()) as JSON."""
    times: dict[str, float | None] = {"command": started}
    from vivit_batch import job
    from vivit_batch.cli import build_parser, config_from

    times["imported"] = time.time()
    args = build_parser().parse_args(["run", *arguments(Path(inputs), Path(output))])
    prepared = job.prepare_job(config_from(args))
    times["prepared"] = time.time()
    job.start_calibration(prepared)
    job.connect(None)
    times["ray_started"] = time.time()
    logs = LogTimes()
    logger = logging.getLogger("vivit_batch")
    logger.addHandler(logs)
    logger.setLevel(logging.INFO)
    first: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not (done.wait(0.01) or first_file(Path(output))):
            pass
        first.append(time.time())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    report = job.run_job(prepared)
    done.set()
    watcher.join()
    times.update(
        measured=logs.first("per clip on one core"),
        planned=logs.first("videos to label"),
        first_row=first[0] if first else None,
        finished=time.time(),
    )
    devices = report.inference_devices
    print("RESULT " + json.dumps({"times": times, "start_s": devices[0]["start_s"]}), flush=True)


def phases_run(inputs: Path, output: Path) -> dict:
    """The phases of one run: (name, seconds from the command, CPU seconds since the last)."""
    shutil.rmtree(output, ignore_errors=True)
    sampler = CpuSampler(interval=0.05)
    sampler.start()
    started = time.time()
    command = [*THIS, "--phases-child", str(inputs), str(output), repr(started)]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}
    )
    sampler.stop()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the phases run failed: {done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    times = result["times"]
    workers = sorted(
        when
        for (pid, command_line), when in sampler.titles.items()
        if ZYGOTE in command_line and sampler.roles.get(pid) == ACTOR_ROLES["DecodeStage"]
    )
    inference = sampler.first_seen("MapBatches(InferenceStage)")
    moments = [
        ("CLI and job modules imported", times["imported"]),
        ("`prepare_job` (checks, manifest scan)", times["prepared"]),
        ("embedded Ray started (the cost measurement runs meanwhile)", times["ray_started"]),
        ("costs measured", times["measured"]),
        ("pools planned, dataset starts", times["planned"]),
        ("decode actor up", sampler.first_seen("MapBatches(DecodeStage)")),
        ("inference actor up", inference),
        ("decoding process started", workers[0] if workers else None),
        ("first decode (a worker forked)", workers[1] if len(workers) > 1 else None),
        ("inference actor ready (model loaded)", inference and inference + result["start_s"]),
        ("first row committed", times["first_row"]),
        ("run over (report written)", times["finished"]),
    ]
    known = sorted((when, name) for name, when in moments if when is not None)
    rows, previous = [], started
    for when, name in known:
        cpu = sum(sampler.used(previous, when).values())
        rows.append({"phase": name, "at_s": when - started, "cpu_s": cpu})
        previous = when
    return {"phases": rows, "by_process": sampler.by_process(started, known[-1][0], top=12)}


# ----------------------------------------------------------------------------- the section


def section(runs: list[dict], phases: dict, env: dict) -> str:
    first = statistics.median(r["first_row_s"] for r in runs)
    fixed = statistics.median(r["fixed_cpu_s"] for r in runs)
    plan = runs[0]["plan"]
    values = {
        **env,
        "runs": len(runs),
        "runs_table": "\n".join(
            f"| {i + 1} | {r['first_row_s']:.1f} s | {r['exit_s']:.1f} s | {r['cpu_s']:.1f} s "
            f"| {r['fixed_cpu_s']:.1f} s |"
            for i, r in enumerate(runs)
        ),
        "first": f"{first:.1f}",
        "first_target": f"{FIRST_ROW_TARGET_S:g}",
        "first_verdict": "met" if first <= FIRST_ROW_TARGET_S else "missed",
        "fixed": f"{fixed:.1f}",
        "fixed_target": f"{FIXED_CPU_TARGET_S:g}",
        "fixed_verdict": "met" if fixed < FIXED_CPU_TARGET_S else "missed",
        "plan": f"{plan['decode_actors']} decode actor(s), {plan['inference_actors']} x "
        f"{plan['inference_threads']} torch thread(s)",
        "phase_table": "\n".join(
            f"| {p['phase']} | {p['at_s']:.2f} s | {p['cpu_s']:.1f} s |" for p in phases["phases"]
        ),
        "processes": "; ".join(
            f"{short_name(command, role)} {seconds:.1f}"
            for role, command, seconds in phases["by_process"]
        ),
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--phases-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases_child:
        inputs, output, started = args.phases_child
        phases_child(inputs, output, float(started))
        return
    if args.inputs:
        make_inputs(Path(args.inputs))
        return
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="vivit-startup-") as work:
        inputs, output = Path(work) / "inputs", Path(work) / "out"
        inputs.mkdir()
        subprocess.run([*THIS, "--inputs", str(inputs)], check=True, cwd=ROOT)
        runs = []
        for index in range(args.runs):
            runs.append(command_run(inputs, output))
            print(f"run {index + 1}: {runs[-1]}", file=sys.stderr, flush=True)
        phases = phases_run(inputs, output)
    env = machine(load_before)
    text = section(runs, phases, env)
    print(text)
    if not args.no_write:
        write_section("Start-up", text)


if __name__ == "__main__":
    main()
