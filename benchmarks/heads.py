"""`train-head` and `relabel` at scale, against labelling the same rows again.

    python -m benchmarks.heads [--rows 1000000] [--train-rows 100000] [--no-write]

Makes a base-size checkpoint (hidden 768, random weights) and two generated outputs of 768-d
embeddings (`testing.outputs`, 5,000 rows a file, 10 classes of Gaussian clusters): one of
`--train-rows` rows, all with a truth value, and one of `--rows` rows. Then, each command in a
fresh process (wall time, and the process's peak resident memory):

  train-head   on the small output (every row labelled), the base checkpoint as backbone
  relabel      the small output, then the large one, with that head

and, as the baseline measured in the same run, the base model's forward pass on this machine
(one 32x224x224 clip at a time, torch's threads): what labelling the rows again would cost in
inference alone (decoding excluded). BENCHMARKS.md's GPU section gives the GPU figures. Writes
the "## Heads" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import sklearn
import torch

from benchmarks.results import BENCHMARKS_MD, cpu_model, load_average, write_section
from vivit_batch.fingerprint import fingerprint
from vivit_batch.testing.checkpoints import BASE, make_checkpoint
from vivit_batch.testing.outputs import Generated, write_generated_output

ROWS_PER_FILE = 5000
CLASSES = tuple(f"class_{i}" for i in range(10))
SPREAD = 10.0
"""Noise per dimension around the class centres (drawn N(0, 1)): enough that the classes
overlap, so that the fit has work to do."""
TARGET_S = 60.0
"""Most seconds wanted for relabelling the large output."""
IN_PROCESS = """
import re
import sys
from pathlib import Path
from vivit_batch.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status").read_text()
print("peak_kib", re.search(r"VmHWM:\\s+(\\d+)", status).group(1), file=sys.stderr)
sys.exit(code)
"""
"""Runs `vivit-batch ARGS` and prints the process's peak resident KiB (Linux)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true", help="print, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        directory = Path(scratch)
        print("making the base checkpoint ...", flush=True)
        make_checkpoint(directory / "base", **BASE)
        sha256 = fingerprint((directory / "base" / "model.safetensors",))
        small = generate(directory / "small", args.train_rows, sha256)
        large = generate(directory / "large", args.rows, sha256)
        head = directory / "head"
        train = ["--truth-column", "manifest_label", "--save", str(head)]
        results = {
            "train-head": command(
                "train-head", str(small), *train, "--model", str(directory / "base")
            ),
            "relabel small": command("relabel", str(small), "--model", str(head)),
            "relabel large": command("relabel", str(large), "--model", str(head)),
        }
        training = json.loads((head / "training.json").read_text())
        training["weights_mib"] = (head / "model.safetensors").stat().st_size / 2**20
        relabelled = check_relabelled(large, args.rows)
        forward = forward_seconds(directory / "base")
    section = report(args, results, training, relabelled, forward)
    if args.no_write:
        print(section)
    else:
        write_section("Heads", section)


def generate(output: Path, rows: int, sha256: str) -> Path:
    started = time.perf_counter()
    spec = Generated(CLASSES, rows, 768, sha256, spread=SPREAD, seed=rows)
    write_generated_output(str(output), spec, ROWS_PER_FILE)
    print(f"generated {rows} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return output


def command(*arguments: str) -> dict:
    """`vivit-batch ARGUMENTS` in a fresh process: wall seconds and peak resident MiB."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, *arguments],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    wall = time.perf_counter() - started
    peak = re.search(r"peak_kib (\d+)", done.stderr)
    if done.returncode != 0 or peak is None:
        raise RuntimeError(f"{arguments[0]} failed: {done.stderr[-2000:]}")
    peak_mib = int(peak.group(1)) / 1024
    print(f"{arguments[0]} {arguments[1]}: {wall:.1f} s, peak {peak_mib:.0f} MiB", flush=True)
    print(done.stdout, flush=True)
    return {"seconds": wall, "peak_mib": peak_mib}


def check_relabelled(output: Path, rows: int) -> dict:
    """The relabelled output's rows and labels, read back (labels only: no embeddings)."""
    import pyarrow.dataset as ds

    table = ds.dataset(output, format="parquet").to_table(columns=["video_id", "label"])
    assert table.num_rows == rows and len(pa.compute.unique(table["video_id"])) == rows
    labels = set(table["label"].drop_null().to_pylist())
    assert labels <= set(CLASSES), labels
    return {"rows": table.num_rows, "labels": len(labels)}


def forward_seconds(base: Path, clips: int = 2) -> float:
    """Median wall seconds of one forward pass of the base model on one 32x224x224 clip, after
    a warm-up (torch's default threads: the machine's cores)."""
    from vivit_batch.model import load_pretrained

    model = load_pretrained(base)
    pixels = torch.randn(1, 32, 3, 224, 224)
    times = []
    with torch.inference_mode():
        for _ in range(clips + 1):
            started = time.perf_counter()
            model(pixels)
            times.append(time.perf_counter() - started)
    print(f"forward: {times[1:]} s per clip", flush=True)
    return float(np.median(times[1:]))


def gpu_figures() -> tuple[str | None, str | None]:
    """(bf16 batch-32 clips/s of the bare forward, the job's end-to-end clips/s) from
    BENCHMARKS.md's GPU section, where it has them."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    forward = re.search(r"^\| bf16 \| 32 \| ([\d.]+) ", text, re.M)
    job = re.search(r"End to end: ([\d.]+) clips/s", text)
    return (forward.group(1) if forward else None), (job.group(1) if job else None)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def report(args, results: dict, training: dict, relabelled: dict, forward: float) -> str:
    large = results["relabel large"]
    held = training["evaluation"]
    cpu_again = forward * args.rows
    gpu_forward, gpu_job = gpu_figures()
    verdict = "met" if large["seconds"] < TARGET_S else "NOT met"
    lines = [
        "## Heads",
        "",
        f"`python -m benchmarks.heads --rows {args.rows} --train-rows {args.train_rows}` on "
        f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}, pyarrow "
        f"{pa.__version__}, torch {torch.__version__}; load average {load_average()} at the "
        "end (other work shares this machine). Generated outputs of 768-d embeddings "
        f"(`vivit_batch.testing.outputs`, {ROWS_PER_FILE} rows a file, zstd), {len(CLASSES)} "
        f"classes of Gaussian clusters (noise {SPREAD:g} per dimension), a base-size backbone "
        "(hidden 768, random weights); each command in a fresh process, timed from start to "
        "exit (imports included), with its peak resident memory.",
        "",
        "| command | rows | files | wall | rows/s | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    sizes = {"train-head": args.train_rows, "relabel small": args.train_rows}
    sizes["relabel large"] = args.rows
    for name, result in results.items():
        rows = sizes[name]
        lines.append(
            f"| {name} | {rows:,} | {-(-rows // ROWS_PER_FILE)} | {result['seconds']:.1f} s | "
            f"{rows / result['seconds']:,.0f} | {result['peak_mib']:,.0f} MiB |"
        )
    lines += [
        "",
        f"train-head: {training['rows']:,} labelled rows, held-out top-1 {held['top1']:.1%} on "
        f"{held['rows']:,} rows ({held['cv_folds']}-fold choice of C: {held['C']:g}; final C "
        f"{training['regularisation']['C']:g}); the time includes loading the backbone and "
        f"writing the checkpoint with it ({training['weights_mib']:.0f} MiB of weights).",
        "",
        f"relabel of {args.rows:,} rows: {large['seconds']:.1f} s (target under {TARGET_S:.0f} "
        f"s: {verdict}), {relabelled['rows']:,} rows read back, one per video, "
        f"{relabelled['labels']} classes. Peak memory {large['peak_mib']:,.0f} MiB against "
        f"{results['relabel small']['peak_mib']:,.0f} MiB for {args.train_rows:,} rows: one "
        f"file at a time (the embeddings alone are {args.rows * 768 * 4 / 2**30:.1f} GiB).",
        "",
        "Labelling the same rows again instead, inference alone (decoding excluded, so a lower "
        "bound):",
        "",
        "| basis | clips/s | time for the rows | relabel is faster by |",
        "|---|---|---|---|",
        f"| base model's forward pass here, measured in this run ({forward:.2f} s per clip, "
        f"{torch.get_num_threads()} threads) | {1 / forward:.3f} | {duration(cpu_again)} | "
        f"{cpu_again / large['seconds']:,.0f}x |",
    ]
    for name, rate in (
        ("BENCHMARKS.md's GPU section: H200, bf16, batch 32, bare forward", gpu_forward),
        ("BENCHMARKS.md's GPU section: the job end to end on the H200 machine", gpu_job),
    ):
        if rate:
            again = args.rows / float(rate)
            lines.append(
                f"| {name} | {rate} | {duration(again)} | {again / large['seconds']:,.0f}x |"
            )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
