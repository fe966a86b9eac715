"""The manifest scan's peak memory on a long manifest: this checkout's scan against a baseline
checkout's, in the same run.

    python -m benchmarks.scan_memory [--rows 10000000] [--baseline DIR [--baseline-name NAME]]
                                     [--no-write]

The manifest is Parquet, `video_id` and `uri` (ids `v` + 12 digits, URIs of 16 local files
round robin, as `benchmarks/scale_inputs.py` writes them; the scan does not open the videos).
Each scan is `python -m vivit_batch.manifest` in a process of its own, as `vivit-batch run`
starts it (`vivit_batch.testing.scans`), from its start to its summary. `--baseline DIR` is the
folder holding an older `vivit_batch` package (`git archive REV vivit_batch | tar -x -C DIR`).
Writes the "## Manifest scan" section of BENCHMARKS.md (`--no-write`: print only).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.listing import checkouts_of, scans_table
from benchmarks.results import load_average, machine, write_section
from benchmarks.scale_inputs import ROW_GROUP, video_ids, video_index
from vivit_batch.config import ManifestSection
from vivit_batch.testing.scans import MeasuredScan, measured_scan

URIS = pa.array([f"/videos/video{i}.mp4" for i in range(16)])


def write_manifest(path: Path, rows: int) -> Path:
    schema = pa.schema([("video_id", pa.string()), ("uri", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, rows, ROW_GROUP):
            count = min(ROW_GROUP, rows - first)
            uris = URIS.take(video_index(first, count) % len(URIS))
            writer.write_table(pa.table([video_ids(first, count), uris], schema=schema))
    return path


def report(args: argparse.Namespace, scans: dict[str, MeasuredScan], load_before: str) -> str:
    where = machine(load_before)
    lines = [
        "## Manifest scan",
        "",
        f"`python -m benchmarks.scan_memory --rows {args.rows}"
        f"{' --baseline DIR' if args.baseline else ''}` on {where['date']}, {where['cpu']}, "
        f"{where['cores']} cores, Python {platform.python_version()}; load average "
        f"{where['load_before']} before, {where['load_after']} after (other work shares this "
        "machine). A Parquet manifest of ids and URIs scanned as `vivit-batch run` scans it "
        "(`python -m vivit_batch.manifest` in a process of its own), with its peak resident "
        "memory.",
        "",
        *scans_table(scans, "rows"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--baseline", help="folder holding the baseline's vivit_batch package")
    parser.add_argument("--baseline-name", default="baseline", help="what the table calls it")
    parser.add_argument("--no-write", action="store_true", help="print, do not write")
    args = parser.parse_args()
    load_before = load_average()
    scans = {}
    with tempfile.TemporaryDirectory(prefix="vivit-scan-") as temporary:
        manifest = write_manifest(Path(temporary) / "manifest.parquet", args.rows)
        for label, checkout in checkouts_of(args).items():
            scan = scans[label] = measured_scan(ManifestSection(str(manifest)), None, checkout)
            print(f"{label}: {scan.seconds:.1f} s, {scan.peak_rss_bytes / 2**20:.0f} MiB")
    text = report(args, scans, load_before)
    print(text)
    if not args.no_write:
        write_section("Manifest scan", text)


if __name__ == "__main__":
    main()
