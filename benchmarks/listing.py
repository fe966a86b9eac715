"""Listing an S3 prefix of many objects as a run's manifest scan lists it: wall time and the scan
process's peak memory, this checkout's scan against a baseline checkout's, in the same run.

    python -m benchmarks.listing [--objects 100000] [--baseline DIR [--baseline-name NAME]]
                                 [--repeats 2] [--no-write]

The prefix is on moto's S3 server, in this process (`tests/helpers/s3.py`), its objects written
straight into the server's store (empty `.mp4` keys). Each scan is `python -m vivit_batch.manifest`
in a process of its own, as `vivit-batch run` starts it (`vivit_batch.testing.scans`): the
listing, the checks and the summary it hands the run. `--baseline DIR` is the folder holding an
older `vivit_batch` package (`git archive main vivit_batch | tar -x -C DIR`). The scans take
turns, `--repeats` times each; the fastest of each is reported (the machine is shared).

Writes the "## Manifest listing" section of BENCHMARKS.md (`--no-write`: print only).
`measure_prefix_listing`, `scans_table` and `checkouts_of` are what other benchmarks call.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform

import pyarrow
import s3fs

from benchmarks.results import load_average, machine, write_section
from vivit_batch.config import ManifestSection, StorageSection
from vivit_batch.manifest import remove_listing
from vivit_batch.storage import storage_options
from vivit_batch.testing.scans import MeasuredScan, measured_scan

BUCKET = "listing-benchmark"
PREFIX = "raw/"


def measure_prefix_listing(
    objects: int = 100_000, checkouts: dict[str, str | None] | None = None, repeats: int = 1
) -> dict[str, MeasuredScan]:
    """The scan of an S3 prefix of `objects` videos on a fresh moto server, by each checkout
    (label: folder of its `vivit_batch`, None: this one), taking turns `repeats` times: each
    one's fastest."""
    from tests.helpers.s3 import ACCESS_KEY, SECRET_KEY, start_moto

    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's line per request
    server = start_moto()
    try:
        server.filesystem().mkdir(BUCKET)
        server.put_objects(BUCKET, (f"{PREFIX}{i:08d}.mp4" for i in range(objects)))
        options = storage_options(StorageSection(endpoint_url=server.endpoint_url))
        section = ManifestSection(f"s3://{BUCKET}/{PREFIX}")
        scans: dict[str, MeasuredScan] = {}
        for _ in range(repeats):
            for label, checkout in (checkouts or {"this checkout": None}).items():
                scan = measured_scan(section, options, checkout)
                if isinstance(scan.summary.listing, str):
                    remove_listing(scan.summary.listing)
                print(f"{label}: {scan.seconds:.1f} s, {scan.peak_rss_bytes / 2**20:.0f} MiB")
                if label not in scans or scan.seconds < scans[label].seconds:
                    scans[label] = scan
    finally:
        server.stop()
    return scans


def report(args: argparse.Namespace, scans: dict[str, MeasuredScan], load_before: str) -> str:
    where = machine(load_before)
    lines = [
        "## Manifest listing",
        "",
        f"`python -m benchmarks.listing --objects {args.objects} --repeats {args.repeats}"
        f"{' --baseline DIR' if args.baseline else ''}` on {where['date']}, "
        f"{where['cpu']}, {where['cores']} cores, 24 GiB, Python {platform.python_version()}, "
        f"pyarrow {pyarrow.__version__}, s3fs {s3fs.__version__}; load average "
        f"{where['load_before']} before, {where['load_after']} after (other work shares this "
        "machine). A prefix of empty `.mp4` objects on moto's S3 server (in the benchmark's "
        "process, on 127.0.0.1), scanned as `vivit-batch run` scans a manifest: "
        "`python -m vivit_batch.manifest` in a process of its own, from its start to its "
        "summary, with its peak resident memory; the scans took turns, the fastest of each "
        "shown.",
        "",
        *scans_table(scans, "videos"),
    ]
    return "\n".join(lines) + "\n"


def scans_table(scans: dict[str, MeasuredScan], counted: str) -> list[str]:
    """The scans' rows, wall time and peak memory as a table; the last against the first
    where there are two."""
    lines = [f"| scan | {counted} | wall | peak RSS |", "|---|---|---|---|"]
    lines += [
        f"| {label} | {scan.summary.rows:,} | {scan.seconds:.1f} s | "
        f"{scan.peak_rss_bytes / 2**20:,.0f} MiB |"
        for label, scan in scans.items()
    ]
    if len(scans) == 2:
        (old_label, old), (new_label, new) = scans.items()
        lines += [
            "",
            f"{new_label} against {old_label}: {new.seconds / old.seconds:.2f}x the time, "
            f"{new.peak_rss_bytes / old.peak_rss_bytes:.2f}x the peak memory.",
        ]
    return lines


def checkouts_of(args: argparse.Namespace) -> dict[str, str | None]:
    """--baseline's checkout (if given) and this one, in that order."""
    checkouts = {args.baseline_name: args.baseline} if args.baseline else {}
    return {**checkouts, "this checkout": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--baseline", help="folder holding the baseline's vivit_batch package")
    parser.add_argument("--baseline-name", default="baseline", help="what the table calls it")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print, do not write")
    args = parser.parse_args()
    load_before = load_average()
    scans = measure_prefix_listing(args.objects, checkouts_of(args), args.repeats)
    section = report(args, scans, load_before)
    if args.no_write:
        print(section)
    else:
        write_section("Manifest listing", section)


if __name__ == "__main__":
    main()
