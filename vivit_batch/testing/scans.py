"""The manifest scan measured in its own process, as a run starts it (`job.prepare.scan_apart`):
its summary, wall time and peak memory, for the tests and benchmarks of what the scan holds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from vivit_batch.config import ManifestSection
from vivit_batch.manifest import ManifestSummary
from vivit_batch.manifest import __main__ as scan_process
from vivit_batch.output import RESERVED_COLUMNS

PEAK = "peak_rss_kib="
MEASURE = f"""
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
sys.stderr.write("\\n{PEAK}%d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Runs a command and writes its peak memory last on stderr. A process started from a large one
counts that one's memory among its own until it execs (Linux keeps the high-water mark across
`execve`): this small one (no site packages) starts the scan."""


@dataclass(frozen=True)
class MeasuredScan:
    summary: ManifestSummary
    seconds: float
    peak_rss_bytes: int
    """the scan process's peak resident memory, its imports included"""


def measured_scan(
    section: ManifestSection, options: dict | None = None, checkout: str | None = None
) -> MeasuredScan:
    """Scan `section` in a child process (`python -m vivit_batch.manifest`): this package's
    scan, or that of the `vivit_batch` package in the folder `checkout` (an older version, say:
    `git archive main vivit_batch | tar -x -C DIR`)."""
    env = None if checkout is None else {**os.environ, "PYTHONPATH": checkout}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        scan = subprocess.run(
            [sys.executable, "-S", "-c", MEASURE, *scan_process.COMMAND],
            input=scan_process.request(section, RESERVED_COLUMNS, options),
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            cwd=checkout,  # `python -m` puts the working directory first on the path
            check=False,
        )
        errors.seek(0)
        printed = errors.read().decode(errors="replace")
    if scan.returncode:
        raise RuntimeError(f"the scan failed: {printed[-2000:]}")
    seconds = time.perf_counter() - started
    peak_kib = int(printed.rsplit(PEAK, 1)[1])
    return MeasuredScan(scan_process.summary_from(scan.stdout), seconds, peak_kib * 1024)
