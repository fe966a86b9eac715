"""`vivit-batch report OUTPUT`: what an output dataset holds and how its runs went."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.dataset as ds

from vivit_batch import storage
from vivit_batch.sink import RUNS_DIR


def summarise_output(output_uri: str, top: int = 10) -> str:
    table = read_output(output_uri, columns=["status", "error_code", "label"])
    status = Counter(table.column("status").to_pylist())
    errors = Counter(c for c in table.column("error_code").to_pylist() if c)
    labels = Counter(x for x in table.column("label").to_pylist() if x)
    lines = [f"{output_uri}: {table.num_rows} rows", f"  status: {dict(status)}"]
    if errors:
        lines.append("  errors: " + ", ".join(f"{c} {n}" for c, n in errors.most_common()))
    lines.append(f"  top labels ({len(labels)} distinct):")
    lines += [f"    {n:>8}  {label}" for label, n in labels.most_common(top)]
    lines.append("  runs:")
    for run in read_run_reports(output_uri):
        speed = run["throughput"]
        lines.append(
            f"    {run['run_id']}: {run['rows_written']} rows, {run['wall_seconds']:.1f} s, "
            f"{speed['clips_per_second']} clips/s (decode {speed['decode_clips_per_second']}, "
            f"inference {speed['inference_clips_per_second']})"
        )
    return "\n".join(lines)


def read_output(output_uri: str, columns: list[str] | None = None):
    filesystem, path = storage.filesystem(output_uri)
    dataset = ds.dataset(path, filesystem=filesystem, format="parquet")
    return dataset.to_table(columns=columns)


def read_run_reports(output_uri: str) -> list[dict]:
    filesystem, path = storage.filesystem(f"{output_uri.rstrip('/')}/{RUNS_DIR}")
    if not filesystem.exists(path):
        return []
    reports = []
    for file in sorted(filesystem.glob(f"{path}/*.json")):
        with filesystem.open(file, "r") as stream:
            reports.append(json.load(stream))
    return reports
