"""`vivit-batch run` against the peer a Ray user would write (`benchmarks/raydata_script.py`: the
Hugging Face page's recipe on Ray Data), on the same manifest and model, start-up counted.

    python -m benchmarks.versus_raydata [--sizes 24 120] [--repeats 2] [--no-write]

Inputs, made once: three 5-minute 854x480 H.264 videos (x264 defaults, 30 fps), a checkpoint of
the tiny test model's two narrow layers at 224 px and 32 frames (so that decoding weighs), and a
manifest per size whose entries point, round robin, at the three videos under distinct ids.
Each command runs in a subprocess from its start to its exit, with its own embedded local Ray
(`RAY_ADDRESS=local` for the script, whose `ray.init()` would otherwise join a cluster another
program left running); the two alternate, `--repeats` times each, and each output is checked
to hold one row per entry. Writes the "## Against a Ray Data script" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

import pyarrow.dataset as ds

from benchmarks.results import load_average, machine, write_section

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).with_name("templates") / "versus_raydata.md"
THIS = [sys.executable, "-m", "benchmarks.versus_raydata"]
SCRIPT = ROOT / "benchmarks" / "raydata_script.py"
VIVIT_BATCH = str(Path(sys.executable).with_name("vivit-batch"))
VIDEOS = 3
TARGETS = {24: 1.2, 120: 1.6}
"""the ratio (script's time / ours) the issue asks for at each size"""


def make_inputs(directory: Path, sizes: list[int]) -> None:
    from vivit_batch.testing.checkpoints import make_checkpoint
    from vivit_batch.testing.media import write_video

    make_checkpoint(
        directory / "checkpoint", image_size=224, num_frames=32, tubelet_size=[2, 16, 16]
    )
    videos = [
        write_video(
            directory / f"video{i}.mp4",
            num_frames=9000,
            width=854,
            height=480,
            content="detailed",
        )
        for i in range(VIDEOS)
    ]
    for size in sizes:
        lines = [f"{videos[i % VIDEOS]},entry-{i:05d}" for i in range(size)]
        (directory / f"manifest-{size}.csv").write_text("uri,video_id\n" + "\n".join(lines))


def timed(command: list[str], output: Path, rows: int) -> float:
    """Wall seconds of `command`, once its output is checked to hold `rows` rows."""
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": "local"}
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed: {done.stderr[-3000:]}")
    written = ds.dataset(output).to_table(columns=["video_id"])
    if written.num_rows != rows or len(set(written["video_id"].to_pylist())) != rows:
        raise SystemExit(f"{output}: {written.num_rows} rows, not one per entry ({rows})")
    return seconds


def compare(inputs: Path, work: Path, size: int, repeats: int) -> dict:
    manifest, model = inputs / f"manifest-{size}.csv", inputs / "checkpoint"
    script, ours = [], []
    for attempt in range(repeats):
        out = work / f"script-{size}-{attempt}"
        peer = [sys.executable, str(SCRIPT), str(manifest), str(out), str(model)]
        script.append(timed(peer, out, size))
        out = work / f"ours-{size}-{attempt}"
        command = [VIVIT_BATCH, "run", "--manifest", str(manifest), "--output", str(out)]
        ours.append(timed([*command, "--model", str(model)], out, size))
        print(
            f"{size} entries: script {script[-1]:.1f} s, vivit-batch {ours[-1]:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return {"size": size, "script": script, "ours": ours}


def section(results: list[dict], env: dict, repeats: int) -> str:
    rows, verdicts = [], []
    for r in results:
        script, ours = statistics.median(r["script"]), statistics.median(r["ours"])
        ratio, target = script / ours, TARGETS.get(r["size"])
        rows.append(
            f"| {r['size']} | {script:.1f} s ({listed(r['script'])}) | {ours:.1f} s "
            f"({listed(r['ours'])}) | {ratio:.2f}x |"
        )
        if target:
            verdict = "met" if ratio >= target else "missed"
            verdicts.append(f"{r['size']} entries: {ratio:.2f}x (target {target}x: {verdict})")
    values = {**env, "repeats": repeats, "table": "\n".join(rows), "verdicts": "; ".join(verdicts)}
    return Template(TEMPLATE.read_text()).substitute(values)


def listed(seconds: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 120])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inputs:
        make_inputs(Path(args.inputs), args.sizes)
        return
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="vivit-versus-") as work:
        inputs = Path(work) / "inputs"
        inputs.mkdir()
        sizes = [str(size) for size in args.sizes]
        subprocess.run([*THIS, "--inputs", str(inputs), "--sizes", *sizes], check=True, cwd=ROOT)
        results = [compare(inputs, Path(work), size, args.repeats) for size in args.sizes]
    env = machine(load_before)
    text = section(results, env, args.repeats)
    print(text)
    if not args.no_write:
        write_section("Against a Ray Data script", text)


if __name__ == "__main__":
    main()
