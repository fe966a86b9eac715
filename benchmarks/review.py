"""`vivit-batch review` on a large output: seconds and peak memory, against reading the same
columns whole.

    python -m benchmarks.review [--rows 1000000] [--hidden 768] [--no-write]

Builds an output of `--rows` rows with the real sink (`FileWriter` and `commit_staged`, 5000
rows a file: `output.rows_per_file`'s default): random `--hidden`-d embeddings, top-5 scores of
random shape (so margins spread from 0 to 1), a `truth` manifest column filled on one row in
ten, one error row in a hundred. Then measures, each in a fresh process, the wall seconds and the
peak resident memory of

  review N     `pick_for_review(output, N, read_truth(output, "truth"))`: file by file, a
               pool of 5 x N
  whole read   the columns review reads, read at once (`dataset.to_table`): what ranking the
               candidates without streaming needs before it starts

Writes the "## Review" section of BENCHMARKS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.results import cpu_model, load_average, write_section
from vivit_batch.output import FileWriter, Output, Unlocked, commit_staged, output_schema
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    VIEWS,
)

ROWS_PER_FILE = 5000
TOP_K = 5
CLASSES = 400
COUNTS = (100, 1000)
MEASURE = """
import json, sys, time
from pathlib import Path
from vivit_batch.output import Output
from vivit_batch.review.pick import ROW_COLUMNS, pick_for_review
from vivit_batch.truth import read_truth

def mib(name):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(name))
    return int(line.split()[1]) / 1024

uri, what = sys.argv[1], sys.argv[2]
output = Output.existing(uri)
before, start = mib("VmRSS:"), time.perf_counter()
if what == "whole":
    columns = [*ROW_COLUMNS, "status", "truth"]
    rows = output.dataset().to_table(columns=columns).num_rows
else:
    rows = pick_for_review(output, int(what), read_truth(output, "truth")).num_rows
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "before": before, "peak": mib("VmHWM:"), "rows": rows}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--no-write", action="store_true", help="print, do not write the section")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vivit-review-bench-"))
    try:
        started = time.perf_counter()
        output = build_output(scratch / "out", args.rows, args.hidden)
        built_s = time.perf_counter() - started
        size = sum(f.stat().st_size for f in (scratch / "out").glob("*.parquet"))
        print(f"built {args.rows} rows, {size / 2**30:.2f} GiB, in {built_s:.0f} s", flush=True)
        results = {f"review N={n}": measure(output.uri, str(n)) for n in COUNTS}
        results["whole read"] = measure(output.uri, "whole")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    section = report(args.rows, args.hidden, size, results)
    print(section)
    if not args.no_write:
        write_section("Review", section)


def build_output(path: Path, rows: int, hidden: int) -> Output:
    output = Output(str(path))
    output.create()
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    writer = FileWriter(output, "bench", output_schema(hidden), ROWS_PER_FILE)
    rng = np.random.default_rng(0)
    for start in range(0, rows, ROWS_PER_FILE):
        batch = synthetic_rows(start, min(ROWS_PER_FILE, rows - start), hidden, rng)
        for staged in writer(batch).to_pylist():
            commit_staged(output, Unlocked(), staged)
    return output


def synthetic_rows(start: int, count: int, hidden: int, rng: np.random.Generator) -> pa.Table:
    """`count` labelled rows as the inference stage hands them to the sink."""
    ok = rng.random(count) >= 0.01
    scores = np.sort(rng.random((count, TOP_K)) ** 3, axis=1)[:, ::-1]
    scores = scores / scores.sum(axis=1, keepdims=True) * rng.uniform(0.6, 1.0, (count, 1))
    ids = rng.integers(0, CLASSES, (count, TOP_K)).astype(np.int32)
    names = np.array([f"class{i}" for i in range(CLASSES)], dtype=object)[ids]
    embeddings = rng.standard_normal((count, hidden), dtype=np.float32)
    labelled = rng.random(count) < 0.1
    truth = [name if known else None for name, known in zip(names[:, 0], labelled, strict=True)]
    schema = output_schema(hidden)
    columns = {field.name: pa.nulls(count, field.type) for field in schema}

    def listed(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        flat = pa.array(values.reshape(-1), kind)
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1]).cast(pa.list_(kind))

    columns |= {
        "video_id": pa.array([f"v{i:08d}" for i in range(start, start + count)]),
        "uri": pa.array([f"/videos/v{i:08d}.mp4" for i in range(start, start + count)]),
        "status": pa.array(np.where(ok, "ok", "error").tolist()),
        "label": pa.array(names[:, 0].tolist()),
        "label_id": pa.array(ids[:, 0]),
        "score": pa.array(scores[:, 0].astype(np.float32)),
        "topk_labels": listed(names, pa.string()),
        "topk_ids": listed(ids, pa.int32()),
        "topk_scores": listed(scores.astype(np.float32), pa.float32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), hidden),
        "model": pa.array(["bench"] * count),
        "model_sha256": pa.array(["ab" * 32] * count),
        "run_id": pa.array(["bench"] * count),
    }
    internal = {
        VIEWS: pa.array(np.ones(count, np.int32)),
        DECODE_SECONDS: pa.array(np.zeros(count)),
        DECODED_ON_NVDEC: pa.array([False] * count),
        INFERENCE_SECONDS: pa.array(np.zeros(count)),
        BYTES_READ: pa.array(np.zeros(count, np.int64)),
        INFERENCE_DEVICE: pa.array(['{"device": "cpu"}'] * count),
    }
    return pa.table({**columns, **internal, "truth": pa.array(truth, pa.string())})


def measure(uri: str, what: str) -> dict:
    """Seconds and peak resident memory (MiB) of a fresh process reading `uri` as `what` says."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, uri, what],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{what}: {measured}", flush=True)
    return measured


def report(rows: int, hidden: int, size: int, results: dict) -> str:
    whole = results["whole read"]
    lines = [
        f"| {name} | {r['seconds']:.1f} | {r['before']:.0f} | {r['peak']:.0f} | "
        f"{r['peak'] / whole['peak']:.2f}x | {r['rows']} |"
        for name, r in results.items()
    ]
    return "\n".join(
        [
            "## Review",
            "",
            f"`python -m benchmarks.review --rows {rows} --hidden {hidden}` on "
            f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, pyarrow {pa.__version__}, numpy "
            f"{np.__version__}; load average {load_average()} at the end. An output of {rows} "
            f"rows of {hidden}-d float32 embeddings written by the real sink, "
            f"{ROWS_PER_FILE} rows a file ({size / 2**30:.2f} GiB of Parquet, zstd), 10% of "
            "rows with a `truth` value, 1% error rows. Each line a fresh process: wall "
            "seconds, resident memory after its imports and at its peak (MiB).",
            "",
            "| read | seconds | MiB after imports | peak MiB | peak / whole read | rows out |",
            "|---|---|---|---|---|---|",
            *lines,
            "",
            "`review` reads the output file by file and keeps embeddings only for its pool (5 x "
            "N candidates, at most twice that plus one file's between compactions); the whole "
            "read holds every row's embedding before anything can be ranked.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
