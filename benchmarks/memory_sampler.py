"""Peak memory of a process and every process under it, from /proc (Linux only): what each one
had resident, by the title it had then. Ray workers change their titles as they take tasks
(`ray::IDLE` -> `ray::ReadParquet->...` -> `ray::IDLE`) and actors (`ray::MapWorker(...)`), so a
worker's peak is known per task kind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cpu_sampler import command_line, process_table

RAY_WORKER = "ray::"
"""how the title of a Ray worker process starts"""
IDLE = "ray::IDLE"
ACTOR_TITLES = ("MapWorker(", "Actor")
"""in the titles of actors (Ray Data's stage actors and internal ones), also where their
constructor (`ray::Class.__init__`) was not sampled"""


@dataclass
class Peak:
    """The most a process held under one title, MiB."""

    pid: int
    title: str
    rss_mib: float = 0.0
    """VmRSS, the most sampled: anonymous, file-backed and shared-memory pages (Ray's object
    store is shared memory: a worker that reads an object in place counts its pages)"""
    anon_mib: float = 0.0
    """RssAnon, the most sampled: the process's own heap"""
    hwm_mib: float = 0.0
    """VmHWM as last seen: the kernel's peak of VmRSS over the process's whole life (all its
    titles), between samples too"""


class MemorySampler(threading.Thread):
    """Reads /proc/<pid>/status of `root` and every process under it every `interval` seconds:
    VmRSS and RssAnon, and VmHWM (the kernel's own peak, which also covers what happens between
    samples). A process that starts and ends between two samples is missed."""

    def __init__(self, root: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.stopping = threading.Event()
        self.peaks: dict[tuple[int, str], Peak] = {}
        self.hwm: dict[int, float] = {}
        self.actor_classes: set[str] = set()
        """classes seen constructing an actor (a worker titled `ray::Class.__init__`)"""

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def sample(self) -> None:
        children, _ = process_table()
        todo = [self.root]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            status = memory_status(pid)
            if not status:
                continue
            title = command_line(pid).strip()
            if title.startswith(RAY_WORKER) and title.endswith(".__init__"):
                self.actor_classes.add(class_name(title))
            peak = self.peaks.setdefault((pid, title), Peak(pid, title))
            peak.rss_mib = max(peak.rss_mib, status.get("VmRSS", 0.0))
            peak.anon_mib = max(peak.anon_mib, status.get("RssAnon", 0.0))
            self.hwm[pid] = max(self.hwm.get(pid, 0.0), status.get("VmHWM", 0.0))

    def all_peaks(self) -> list[Peak]:
        """Each (process, title)'s peak, its process's VmHWM filled in, largest RSS first."""
        for peak in self.peaks.values():
            peak.hwm_mib = self.hwm.get(peak.pid, 0.0)
        return sorted(self.peaks.values(), key=lambda p: -p.rss_mib)

    def root_peak_mib(self) -> float:
        """The root process's peak: its VmHWM as last seen."""
        return self.hwm.get(self.root, 0.0)

    def is_ray_task(self, peak: Peak) -> bool:
        """Whether `peak` is of a Ray worker running a task: not an actor, not idle."""
        title = peak.title
        return (
            title.startswith(RAY_WORKER)
            and title != IDLE
            and class_name(title) not in self.actor_classes
            and not any(fragment in title for fragment in ACTOR_TITLES)
        )

    def largest(self, which) -> Peak | None:
        """The (process, title) with the most RSS among those `which(peak)` accepts."""
        chosen = [peak for peak in self.all_peaks() if peak.pid != self.root and which(peak)]
        return chosen[0] if chosen else None


def class_name(title: str) -> str:
    """`Class` of a Ray worker's title `ray::Class` or `ray::Class.method`."""
    return title.removeprefix(RAY_WORKER).split(".", 1)[0]


def memory_status(pid: int) -> dict[str, float]:
    """The Vm*/Rss* lines of /proc/<pid>/status, MiB; empty once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            values[name] = int(value.split()[0]) / 1024
    return values


def run_sampled(command: list[str], directory: Path, log: Path) -> tuple[MemorySampler, float]:
    """`command` run in `directory` with an embedded local Ray (RAY_ADDRESS emptied), its output
    to `log`, sampled until it exits: the sampler and the wall seconds. A command that fails
    ends the benchmark with the end of its log."""
    started = time.perf_counter()
    with log.open("wb") as stream:
        process = subprocess.Popen(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"},
            cwd=directory,
        )
        sampler = MemorySampler(process.pid)
        sampler.start()
        code = process.wait()
    wall = time.perf_counter() - started
    sampler.stop()
    if code != 0:
        raise SystemExit(f"{' '.join(command)}: exit code {code}\n{log.read_text()[-4000:]}")
    return sampler, wall
