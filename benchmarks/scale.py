"""Scale: incremental reruns over millions of committed rows, and an S3 listing of 100,000
objects.

    python -m benchmarks.scale --rows 1000000 [--rows 10000000] [--listing-objects 100000]
        [--work DIR] [--keep] [--no-write] [--json PATH] [--before PATH] [--only runs|listing]

The generator (`benchmarks.scale_inputs`, whose docstring has the details): the tiny test
checkpoint, 4 tiny H.264 videos, and for each N given with --rows, without decoding anything:
a Parquet manifest of N rows (`video_id`, `uri`; every row points at one of the 4 videos under
its own id), the same with N/100 new rows appended, and an output holding the N rows committed
as one run through the project's own write path (the output's lock, `FileWriter` staging files
of `output.rows_per_file` rows in worker processes, `RunWriter` committing each under the
lock, then the identity `prepare_job` computes for the checkpoint and a run report), so that
`vivit-batch run` takes the output for this model's. Every 200th row is an error row. The
manifest takes under a second per million rows, the output about 15 s per million on 2 cores.

For each N, two runs of the real command, `vivit-batch run --manifest M --output O --model
CHECKPOINT` as a subprocess with an embedded local Ray (RAY_ADDRESS emptied) and the default
configuration: *nothing to do* (the manifest of the N committed rows) and then *1% new* (the
manifest with N/100 rows appended, which the run decodes, labels and commits). Measured:

- wall: the command from start to exit (checks, the manifest scan, Ray's start, the run, its
  shutdown), and `run_job`'s own (the run report's `wall_seconds`);
- memory: `benchmarks.memory_sampler.MemorySampler` reads /proc/<pid>/status of the command and
  of every process under it (with an embedded Ray: its GCS, raylet, agents and workers) every
  0.5 s. *Driver*: the command's own peak RSS (its VmHWM, the kernel's high-water mark).
  *Largest Ray worker*: the most resident memory (VmRSS) sampled in any Ray worker process
  (title `ray::...`), the driver excluded, with the title it had then; *largest Ray task*: the
  same among workers running a task (not an actor, not idle): the manifest tasks (read, ids,
  skip, versions, counts). Their RssAnon (own heap, without Ray's shared
  object store pages) beside. *Largest other*: the largest non-Ray process under the command
  (the manifest scan's child, the cost measurement's, Ray's GCS and raylet, decoders);
- objects: `benchmarks.file_events.FolderEvents` counts, from the kernel (inotify), what every
  process does in the output's folder and its partition folders during the command: opens of
  the folder (listings), opens of data files (`*.parquet`; and how many distinct files), files
  that appeared (committed, staged files renamed in); beside the data files it held before, and
  the run report's files written and committed videos skipped.

Listing: moto's S3 server (`ThreadedMotoServer`, in this process, on 127.0.0.1) holding
--listing-objects small objects `videos/NNN/NNNNNN.mp4` (put straight into moto's in-memory
backend: 100,000 PUTs over HTTP would take minutes), listed by a child process with the
project's listing function (`list_prefix`, the one call to adapt if its interface changes):
wall time, the child's CPU seconds, and its peak RSS (VmHWM) before and after the listing.
Most of the wall time is moto's own (its listing sorts the bucket's keys for every page).

Ratios: each figure at the largest N against the smallest, against the issue's targets: driver
peak under 2 GiB at 10M and within 1.5x of 1M, largest Ray task within 1.2x, a nothing-to-do
rerun of 10M rows under 10 minutes. With --before (the --json file of an earlier run) the same
runs are compared with those figures.

What it generated is deleted at the end (each N's output and manifests once measured) unless
--keep. Disk: about 250 bytes per committed row. Writes the "## Scale" section of
BENCHMARKS.md (`--no-write`: print only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from string import Template

from benchmarks.cpu_sampler import short_name
from benchmarks.file_events import FolderEvents
from benchmarks.memory_sampler import RAY_WORKER, Peak, memory_status, run_sampled
from benchmarks.results import load_average, machine, write_section
from benchmarks.scale_inputs import (
    Model,
    Video,
    commit_output,
    make_shared_inputs,
    model_of,
    write_manifest,
)
from benchmarks.startup import VIVIT_BATCH

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).with_name("templates") / "scale.md"
THIS = [sys.executable, "-m", "benchmarks.scale"]
NEW_SHARE = 100
"""the second run's manifest has N / NEW_SHARE new rows"""
BYTES_PER_ROW = 250
"""disk per committed row (the output, the two manifests), with margin"""
CASES = ("nothing to do", "1% new")
SMALL_MANIFEST = "nothing to do over the smallest manifest"
"""At each N but the smallest, also: the smallest N's manifest (its rows are the first of this
output's) over this output, so that only the committed rows grow."""

DRIVER_LIMIT_MIB = 2048
DRIVER_GROWTH = 1.5
TASK_GROWTH = 1.2
NOTHING_TO_DO_LIMIT_S = 600
TARGET_ROWS = 10_000_000

BUCKET = "scale-listing"
LISTING_PREFIX = "videos/"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIASCALEBENCHMARK01",
    "AWS_SECRET_ACCESS_KEY": "scale-benchmark-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# ----------------------------------------------------------------------------------- runs


def measure_size(
    rows: int, shared: tuple[Path, list[Video]], work: Path, keep: bool, smallest: int
) -> dict:
    """Generate the inputs for `rows` committed rows, then the runs over them (with the
    `smallest` N's manifest too, when that is fewer rows: `SMALL_MANIFEST`)."""
    checkpoint, videos = shared
    directory = work / f"rows-{rows}"
    directory.mkdir()
    require_disk(directory, rows)
    output = directory / "out"
    model = model_of(checkpoint, videos, output)
    started = time.perf_counter()
    manifests = {
        CASES[0]: write_manifest(directory / "manifest.parquet", videos, rows),
        CASES[1]: write_manifest(
            directory / "manifest-new.parquet", videos, rows + rows // NEW_SHARE
        ),
    }
    if smallest < rows:
        manifests[SMALL_MANIFEST] = write_manifest(
            directory / "manifest-small.parquet", videos, smallest
        )
    manifest_s = time.perf_counter() - started
    generated = commit_output(str(output), model, videos, rows, os.cpu_count() or 1)
    print(f"{rows:,} rows: manifests {manifest_s:.1f} s, {generated}", file=sys.stderr, flush=True)
    figures = {
        "rows": rows,
        "generation": {
            "manifest_s": manifest_s,
            "output_s": generated.seconds,
            "files": generated.files,
            "errors": generated.errors,
            "output_bytes": folder_bytes(output),
        },
        "runs": [
            measure_run(case, new, manifest, output, model, directory)
            for (case, manifest), new in zip(
                manifests.items(), (0, rows // NEW_SHARE, 0)[: len(manifests)], strict=True
            )
        ],
    }
    if not keep:
        shutil.rmtree(directory)
    return figures


def measure_run(
    case: str, new: int, manifest: Path, output: Path, model: Model, directory: Path
) -> dict:
    """One `vivit-batch run`, watched: wall, memory, objects. It must label the `new` videos
    only (the generated rows are taken as committed)."""
    run_id = "scale-" + re.sub("[^a-z0-9]+", "-", case.replace("%", "pct"))
    folders = [str(output), *data_folders(output)]
    files_before = sum(len(data_files(folder)) for folder in folders)
    events = FolderEvents(folders)
    events.start()
    log = directory / f"{run_id}.log"
    command = [
        VIVIT_BATCH,
        "run",
        "--manifest",
        str(manifest),
        "--output",
        str(output),
        "--model",
        model.source,
        "--set",
        f"run.run_id={run_id}",
    ]
    print(f"  {case}: {' '.join(command)}", file=sys.stderr, flush=True)
    sampler, wall = run_sampled(command, directory, log)
    events.stop()
    report = json.loads((output / "_runs" / f"{run_id}.json").read_text())
    if report["videos_written"] != new:
        raise SystemExit(f"{case}: the run labelled {report['videos_written']} videos, not {new}")
    figures = {
        "case": case,
        "manifest_rows": report["manifest_rows"],
        "labelled": report["videos_written"],
        "skipped": report["skipped_committed"],
        "wall_s": wall,
        "run_job_s": report["wall_seconds"],
        "driver_mib": sampler.root_peak_mib(),
        "ray_worker": peak_figures(sampler.largest(lambda p: p.title.startswith(RAY_WORKER))),
        "ray_task": peak_figures(sampler.largest(sampler.is_ray_task)),
        "other": peak_figures(sampler.largest(lambda p: not p.title.startswith(RAY_WORKER))),
        "top_processes": [peak_figures(p) for p in sampler.all_peaks()[:12]],
        "files_before": files_before,
        "listings": sum(events.listings.values()),
        "data_opens": sum(n for name, n in events.opens.items() if name.endswith(".parquet")),
        "data_files_opened": sum(1 for name in events.opens if name.endswith(".parquet")),
        "appeared": sum(1 for name in events.appeared if name.endswith(".parquet")),
        "files_written": len(report["files"]),
        "events_overflowed": events.overflowed,
    }
    print(f"  {json.dumps(figures)}", file=sys.stderr, flush=True)
    return figures


def peak_figures(peak: Peak | None) -> dict | None:
    if peak is None:
        return None
    return {
        "title": peak.title[:200],
        "rss_mib": peak.rss_mib,
        "anon_mib": peak.anon_mib,
        "hwm_mib": peak.hwm_mib,
    }


def data_folders(output: Path) -> list[str]:
    """The output's partition folders (`name=value/`), where data files also are."""
    return [str(p) for p in output.iterdir() if p.is_dir() and not p.name.startswith("_")]


def data_files(folder: str) -> list[str]:
    return [entry.name for entry in os.scandir(folder) if entry.name.endswith(".parquet")]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def require_disk(directory: Path, rows: int) -> None:
    needed = rows * BYTES_PER_ROW
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise SystemExit(
            f"{directory}: {free / 2**30:.1f} GiB free, {rows:,} rows need about "
            f"{needed / 2**30:.1f} GiB: give --work on a larger disk"
        )


# -------------------------------------------------------------------------------- listing


def list_prefix(uri: str, options: dict) -> int:
    """The project's listing of a prefix, as the manifest scan calls it; how many videos it
    found. (The one call to adapt when the listing's interface changes.)"""
    from vivit_batch.manifest.listing import list_videos

    return sum(batch.num_rows for batch in list_videos(uri, options))


def listing_child(uri: str, endpoint: str) -> None:
    """List `uri` once; prints the figures as JSON (this process does nothing else)."""
    import s3fs  # noqa: F401 (imported before the baseline: the listing's own memory only)

    from vivit_batch.config import StorageSection
    from vivit_batch.storage import storage_options

    options = storage_options(StorageSection(endpoint_url=endpoint))
    baseline = peak_rss_mib()
    cpu, started = time.process_time(), time.perf_counter()
    found = list_prefix(uri, options)
    figures = {
        "objects": found,
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
    }
    print("RESULT " + json.dumps(figures), flush=True)


def peak_rss_mib() -> float:
    return memory_status(os.getpid())["VmHWM"]


def listing(objects: int) -> dict:
    """`objects` objects on moto's S3 server, listed by a child process."""
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: a line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        started = time.perf_counter()
        for index in range(objects):
            key = f"{LISTING_PREFIX}{index // 1000:03d}/{index:06d}.mp4"
            backend.put_object(BUCKET, key, b"0")
        print(
            f"listing: {objects:,} objects put in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        uri = f"s3://{BUCKET}/{LISTING_PREFIX}"
        done = subprocess.run(
            [*THIS, "--listing-child", uri, endpoint], capture_output=True, text=True, cwd=ROOT
        )
    finally:
        server.stop()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the listing failed: {done.stderr[-3000:]}")
    figures = {"put": objects, **json.loads(lines[-1][len("RESULT ") :])}
    print(f"listing: {figures}", file=sys.stderr, flush=True)
    return figures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -------------------------------------------------------------------------------- section


def section(raw: dict, before: dict | None) -> str:
    sizes = raw["sizes"]
    values = {
        **raw["environment"],
        "command": raw["command"],
        "note": raw["note"],
        "generation_table": "\n".join(generation_line(size) for size in sizes) or "| - |",
        "runs_table": "\n".join(
            run_line(size["rows"], run) for size in sizes for run in size["runs"]
        )
        or "| - |",
        "objects_table": "\n".join(
            objects_line(size["rows"], run) for size in sizes for run in size["runs"]
        )
        or "| - |",
        "growth": growth(sizes),
        "before": compared(raw, before) if before else "",
        "listing": listing_text(raw["listing"]),
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def generation_line(size: dict) -> str:
    g = size["generation"]
    return (
        f"| {size['rows']:,} | {g['manifest_s']:.1f} s | {g['output_s']:.1f} s | {g['files']:,} "
        f"| {g['errors']:,} | {g['output_bytes'] / 2**20:,.0f} MiB |"
    )


def run_line(rows: int, run: dict) -> str:
    return (
        f"| {rows:,} | {run['case']} | {run['manifest_rows']:,} | {run['labelled']:,} "
        f"| {run['wall_s']:.1f} s | {run['run_job_s']:.1f} s | {run['driver_mib']:,.0f} "
        f"| {peak_text(run['ray_worker'])} | {peak_text(run['ray_task'])} "
        f"| {peak_text(run['other'], anon=False)} |"
    )


def peak_text(peak: dict | None, anon: bool = True) -> str:
    if peak is None:
        return "-"
    own = f" ({peak['anon_mib']:,.0f} own)" if anon else ""
    return f"{peak['rss_mib']:,.0f}{own}: {process_name(peak['title'])}"


def process_name(title: str) -> str:
    return short_name(title, "").replace(" ()", "").replace("|", "/")


def objects_line(rows: int, run: dict) -> str:
    overflow = " (events lost)" if run["events_overflowed"] else ""
    return (
        f"| {rows:,} | {run['case']} | {run['files_before']:,} | {run['listings']:,} "
        f"| {run['data_opens']:,} ({run['data_files_opened']:,} distinct){overflow} "
        f"| {run['appeared']:,} | {run['files_written']:,} | {run['skipped']:,} |"
    )


def growth(sizes: list[dict]) -> str:
    """Each figure at the largest N against the smallest, and the issue's targets."""
    if not sizes:
        return ""
    small, large = sizes[0], sizes[-1]
    lines = []
    for case in CASES:
        a, b = run_of(small, case), run_of(large, case)
        if len(sizes) > 1:
            factor = large["rows"] / small["rows"]
            lines.append(
                f"- {case}, {large['rows']:,} rows against {small['rows']:,} ({factor:g}x the "
                f"rows): wall {ratio(b['wall_s'], a['wall_s'])}, driver peak "
                f"{ratio(b['driver_mib'], a['driver_mib'])} (target within {DRIVER_GROWTH}x: "
                f"{verdict(b['driver_mib'] <= DRIVER_GROWTH * a['driver_mib'])}), largest Ray "
                f"task {task_ratio(a, b)}, largest Ray worker "
                f"{ratio(b['ray_worker']['rss_mib'], a['ray_worker']['rss_mib'])}."
            )
        lines.append(
            f"- {case}, {large['rows']:,} rows: driver peak {b['driver_mib']:,.0f} MiB (target "
            f"under {DRIVER_LIMIT_MIB:,} MiB at {TARGET_ROWS:,} rows: "
            f"{verdict(b['driver_mib'] < DRIVER_LIMIT_MIB)})."
        )
    if len(sizes) > 1:
        a, b = run_of(small, CASES[0]), run_of(large, SMALL_MANIFEST)
        lines.append(
            f"- The same {small['rows']:,}-row manifest over {large['rows']:,} committed rows "
            f"against {small['rows']:,}: largest Ray task {task_ratio(a, b)}; driver peak "
            f"{ratio(b['driver_mib'], a['driver_mib'])}; wall {ratio(b['wall_s'], a['wall_s'])}."
        )
    nothing = run_of(large, CASES[0])
    lines.append(
        f"- Nothing to do over {large['rows']:,} rows: {nothing['wall_s']:.0f} s (target under "
        f"{NOTHING_TO_DO_LIMIT_S} s at {TARGET_ROWS:,} rows: "
        f"{verdict(nothing['wall_s'] < NOTHING_TO_DO_LIMIT_S)})."
    )
    return "\n".join(lines)


def task_ratio(a: dict, b: dict) -> str:
    if not (a["ray_task"] and b["ray_task"]):
        return "not seen"
    figure = ratio(b["ray_task"]["rss_mib"], a["ray_task"]["rss_mib"])
    own = ratio(b["ray_task"]["anon_mib"], a["ray_task"]["anon_mib"])
    ok = b["ray_task"]["rss_mib"] <= TASK_GROWTH * a["ray_task"]["rss_mib"]
    return f"{figure}, own heap {own} (target within {TASK_GROWTH}x: {verdict(ok)})"


def compared(raw: dict, before: dict) -> str:
    """The same runs against an earlier --json's figures."""
    lines = [
        "",
        f"Against the figures of an earlier run ({before['environment']['date']}, "
        f"`{before['command']}`): now / before.",
        "",
        "| rows | run | wall | driver peak | largest Ray task | largest Ray worker |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    earlier = {(s["rows"], r["case"]): r for s in before["sizes"] for r in s["runs"]}
    for size in raw["sizes"]:
        for run in size["runs"]:
            old = earlier.get((size["rows"], run["case"]))
            if old is None:
                continue
            lines.append(
                f"| {size['rows']:,} | {run['case']} "
                f"| {run['wall_s']:.0f} / {old['wall_s']:.0f} s "
                f"| {run['driver_mib']:,.0f} / {old['driver_mib']:,.0f} MiB "
                f"| {peak_pair(run['ray_task'], old['ray_task'])} "
                f"| {peak_pair(run['ray_worker'], old['ray_worker'])} |"
            )
    now, old = raw["listing"], before["listing"]
    if now and old:
        lines += [
            "",
            f"The listing of {now['objects']:,} objects (before: {old['objects']:,}): "
            f"{listing_growth(now)} / {listing_growth(old)} MiB over the listing process's "
            f"imports, {now['cpu_s']:.1f} / {old['cpu_s']:.1f} CPU seconds.",
        ]
    return "\n".join(lines) + "\n"


def listing_growth(listed: dict) -> str:
    return f"{listed['peak_mib'] - listed['baseline_mib']:+,.0f}"


def peak_pair(now: dict | None, old: dict | None) -> str:
    if not (now and old):
        return "-"
    return f"{now['rss_mib']:,.0f} / {old['rss_mib']:,.0f} MiB"


def listing_text(listed: dict | None) -> str:
    if listed is None:
        return "Not measured in this run (`--only runs`)."
    return (
        f"{listed['objects']:,} objects found of {listed['put']:,} put; {listed['wall_s']:.1f} s "
        f"wall, {listed['cpu_s']:.1f} CPU seconds in the listing process (the rest is moto "
        f"serving the pages); its peak RSS {listed['peak_mib']:,.0f} MiB, "
        f"{listing_growth(listed)} MiB over its "
        f"{listed['baseline_mib']:,.0f} MiB before the listing (Python, pyarrow, s3fs imported)."
    )


def run_of(size: dict, case: str) -> dict:
    return next(run for run in size["runs"] if run["case"] == case)


def ratio(now: float, then: float) -> str:
    return f"{now / then:.2f}x" if then else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def environment(load_before: str) -> dict:
    from benchmarks.pipeline import memory_gib  # imports torch: not in the listing's process

    return {
        **machine(load_before),
        "memory_gib": f"{memory_gib():.0f}",
        "python": sys.version.split()[0],
        "versions": ", ".join(
            f"{name} {version(name)}" for name in ("pyarrow", "ray", "moto", "av", "torch")
        ),
    }


# ----------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="committed rows (repeatable)")
    parser.add_argument("--listing-objects", type=int, default=100_000)
    parser.add_argument("--only", choices=("runs", "listing"), help="one part only")
    parser.add_argument("--work", type=Path, help="where to generate (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep what was generated")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    parser.add_argument("--json", type=Path, help="also write the raw figures there")
    parser.add_argument("--before", type=Path, help="an earlier --json, to compare with")
    parser.add_argument("--note", default="", help="said after the first line: what was measured")
    parser.add_argument("--render", type=Path, help="only render the section of a --json file")
    parser.add_argument("--listing-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listing_child:
        listing_child(*args.listing_child)
        return
    if args.render:
        raw = json.loads(args.render.read_text())
    else:
        if args.only != "listing" and not args.rows:
            parser.error("give --rows N (repeatable), or --only listing")
        raw = measure(args)
    raw["note"] = args.note or raw.get("note", "")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    before = json.loads(args.before.read_text()) if args.before else None
    text = section(raw, before)
    print(text)
    if not args.no_write:
        write_section("Scale", text)


def measure(args: argparse.Namespace) -> dict:
    """The runs at each --rows and the listing, as the raw figures of the section."""
    rows = sorted(args.rows or []) if args.only != "listing" else []
    load_before = load_average()
    work = args.work or Path(tempfile.mkdtemp(prefix="vivit-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        sizes = []
        if rows:
            shared = make_shared_inputs(work)
            sizes = [measure_size(n, shared, work, args.keep, rows[0]) for n in rows]
        listed = listing(args.listing_objects) if args.only != "runs" else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    flags = [*(f"--rows {n}" for n in rows), *([f"--only {args.only}"] if args.only else [])]
    return {
        "command": " ".join(["python -m benchmarks.scale", *flags]),
        "sizes": sizes,
        "listing": listed,
        "environment": environment(load_before),
    }


if __name__ == "__main__":
    main()
