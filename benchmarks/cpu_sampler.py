"""CPU seconds by role from /proc: the driver, the decode and inference actors (their isolated
decoders included), and Ray's own processes. Linux only."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

ROLES = ("decode actor", "inference actor", "driver", "other Ray")


TICK = os.sysconf("SC_CLK_TCK")
ACTOR_ROLES = {"DecodeStage": "decode actor", "InferenceStage": "inference actor"}


def process_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(children of each pid, CPU seconds (user + system) of each pid), from /proc."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return children, cpu


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return ""


def own_cpu() -> float:
    """CPU seconds of this process and of its own helper processes (the decode stage's isolated
    decoder: children whose command line names vivit_batch), not of Ray's."""
    children, cpu = process_table()
    helpers = [pid for pid in children.get(os.getpid(), []) if "vivit_batch" in command_line(pid)]
    todo, total = helpers, time.process_time()
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


class CpuSampler(threading.Thread):
    """CPU seconds of this process and all its descendants (with `address="local"`: GCS, raylet,
    their agents and every Ray worker), sampled from /proc, by role. A process inherits its
    parent's role, so the decode actor's isolated decoder counts as the decode actor, and this
    process's own helpers as the driver."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.stopping = threading.Event()
        self.roles: dict[int, str] = {}
        self.commands: dict[int, str] = {}
        self.titles: dict[tuple[int, str], float] = {}
        """(pid, command line) -> when it was first seen: a Ray worker's title changes when it
        becomes an actor"""

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)
        self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def sample(self) -> None:
        now = time.time()
        children, cpu = process_table()
        me = os.getpid()
        # This thread's own CPU, as a negative pseudo-process of the driver: sampling is not the
        # driver's work.
        found: dict[int, float] = {-1: -time.thread_time()}
        todo = [(me, "")]
        while todo:
            pid, parent_role = todo.pop()
            if pid not in cpu:
                continue
            found[pid] = cpu[pid]
            role = self.role(pid, me, parent_role)
            todo += [(child, role) for child in children.get(pid, [])]
        self.samples.append((now, found))

    def role(self, pid: int, me: int, parent_role: str) -> str:
        if pid == me:
            return "driver"
        if pid not in self.commands:
            self.commands[pid] = command_line(pid)
            self.titles.setdefault((pid, self.commands[pid]), time.time())
        if self.roles.get(pid) in ACTOR_ROLES.values():  # a worker stays an actor once it is one
            return self.roles[pid]
        command = self.commands[pid] = command_line(pid) or self.commands[pid]
        self.titles.setdefault((pid, command), time.time())
        role = next((r for name, r in ACTOR_ROLES.items() if name in command), None)
        if role is None and parent_role in ACTOR_ROLES.values():
            role = parent_role
        if role is None:
            role = "driver" if parent_role == "driver" and "vivit_batch" in command else "other Ray"
        self.roles[pid] = role
        return role

    def at(self, when: float) -> dict[int, float]:
        """CPU seconds per process at `when`: interpolated between the samples either side of it
        for a process in both, else at its last sample before (exited processes included)."""
        state: dict[int, float] = {}
        previous = None
        for stamp, found in self.samples:
            if stamp > when and state:
                if previous is not None:
                    weight = (when - previous) / (stamp - previous)
                    for pid, cpu in found.items():
                        if pid in state:
                            state[pid] += weight * (cpu - state[pid])
                break
            state.update(found)
            previous = stamp
        return state

    def first_seen(self, fragment: str) -> float | None:
        """When a process whose command line holds `fragment` was first seen (None: never)."""
        times = [when for (_, command), when in self.titles.items() if fragment in command]
        return min(times) if times else None

    def by_process(self, start: float, end: float, top: int = 8) -> list[tuple[str, str, float]]:
        """(role, command line, CPU seconds) of the processes that used the most CPU between two
        times."""
        before, after = self.at(start), self.at(end)
        used = [
            (
                self.roles.get(pid, "driver"),
                self.commands.get(pid, ""),
                cpu - before.get(pid, 0),
            )
            for pid, cpu in after.items()
        ]
        return sorted(used, key=lambda item: -item[2])[:top]

    def used(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each role used between two times."""
        before, after = self.at(start), self.at(end)
        totals = dict.fromkeys(ROLES, 0.0)
        for pid, cpu in after.items():
            totals[self.roles.get(pid, "driver")] += cpu - before.get(pid, 0.0)
        return totals


def short_name(command: str, role: str) -> str:
    """A process's name for the table, from its command line."""
    if command.startswith("ray::"):
        return "`" + command.split()[0].removesuffix(".__init__") + "`"
    if "vivit_batch.video.worker" in command:
        return f"isolated decoder of the {role}"
    words = command.split()
    if not words:
        return role
    name = words[0].rsplit("/", 1)[-1]
    if name.startswith("python") and len(words) > 2 and words[1] in ("-m", "-u"):
        words = words[1:]
    if name.startswith("python") and len(words) > 1:
        name = words[1].rsplit("/", 1)[-1]
    return f"{name} ({role})"
