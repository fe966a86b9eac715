"""The run report: what one run did, as a typed object, written to `OUT/_runs/<run_id>.json`.

The CLI's summary, `vivit-batch report`, the benchmarks and the tests all read this object;
`to_dict`/`from_dict` are its JSON form (fields a report lacks read as their defaults).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import typing
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass
class WriteStats:
    """What a set of committed files holds, summed from the rows' internal columns."""

    rows: int = 0
    videos: int = 0
    """distinct videos (a video's rows are never split between files)"""
    files: list[str] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    clips: int = 0
    decode_seconds: float = 0.0
    nvdec_clips: int = 0
    """clips of videos whose frames NVDEC decoded"""
    nvdec_decode_seconds: float = 0.0
    inference_seconds: float = 0.0
    bytes_read: int = 0
    devices: list[str] = field(default_factory=list)
    """the distinct inference actors' device records (JSON), see `device.describe`"""
    rows_replaced: int = 0
    """committed rows of earlier runs that these rows took the place of"""

    def to_json(self) -> str:
        return json.dumps(
            {**vars(self), "status": dict(self.status), "error_codes": dict(self.error_codes)}
        )

    @classmethod
    def from_json(cls, text: str) -> WriteStats:
        values = json.loads(text)
        counters = {name: Counter(values[name]) for name in ("status", "error_codes")}
        return cls(**{**values, **counters})

    def add(self, other: WriteStats) -> None:
        self.rows += other.rows
        self.videos += other.videos
        self.files += [f for f in other.files if f not in self.files]
        self.status.update(other.status)
        self.error_codes.update(other.error_codes)
        self.clips += other.clips
        self.decode_seconds += other.decode_seconds
        self.nvdec_clips += other.nvdec_clips
        self.nvdec_decode_seconds += other.nvdec_decode_seconds
        self.inference_seconds += other.inference_seconds
        self.bytes_read += other.bytes_read
        self.rows_replaced += other.rows_replaced
        self.devices += [d for d in other.devices if d not in self.devices]


@dataclass
class Throughput:
    """Clips per second end to end, and per stage from the time its actors were busy (the
    decode stage also per kind of decode actor, where there were NVDEC ones)."""

    clips: int = 0
    clips_per_second: float | None = None
    decode_clips_per_second: float | None = None
    inference_clips_per_second: float | None = None
    bytes_read: int = 0
    bytes_read_per_video: int | None = None
    nvdec_clips: int = 0
    """clips of videos whose frames NVDEC decoded (the rest, and error rows' time: the CPU's)"""
    nvdec_decode_clips_per_second: float | None = None
    cpu_decode_clips_per_second: float | None = None

    @classmethod
    def of(
        cls,
        stats: WriteStats,
        wall_seconds: float,
        decode_actors: int,
        inference_actors: int,
        gpu_decoders: int = 0,
    ) -> Throughput:
        def per_second(clips: int, busy_seconds: float, actors: int) -> float | None:
            return round(clips * actors / busy_seconds, 3) if busy_seconds and actors else None

        cpu_clips = stats.clips - stats.nvdec_clips
        cpu_seconds = stats.decode_seconds - stats.nvdec_decode_seconds
        return cls(
            clips=stats.clips,
            clips_per_second=round(stats.clips / wall_seconds, 3) if wall_seconds else None,
            decode_clips_per_second=per_second(
                stats.clips, stats.decode_seconds, decode_actors + gpu_decoders
            ),
            inference_clips_per_second=per_second(
                stats.clips, stats.inference_seconds, inference_actors
            ),
            bytes_read=stats.bytes_read,
            bytes_read_per_video=round(stats.bytes_read / stats.videos) if stats.videos else None,
            nvdec_clips=stats.nvdec_clips,
            nvdec_decode_clips_per_second=per_second(
                stats.nvdec_clips, stats.nvdec_decode_seconds, gpu_decoders
            ),
            cpu_decode_clips_per_second=per_second(cpu_clips, cpu_seconds, decode_actors)
            if gpu_decoders
            else None,  # without NVDEC decoders: decode_clips_per_second
        )


@dataclass
class ErrorBudget:
    """The run fails (exit code 3) when the manifest's videos whose row in the output is an
    error, this run's and earlier runs' alike, exceed `max_error_fraction` of the manifest."""

    manifest_rows: int = 0
    errors_this_run: int = 0
    errors_kept: int = 0
    """the manifest's videos whose error row from an earlier run this run left in place"""
    max_error_fraction: float = 1.0

    @property
    def errors(self) -> int:
        return self.errors_this_run + self.errors_kept

    @property
    def error_fraction(self) -> float:
        return self.errors / self.manifest_rows if self.manifest_rows else 0.0

    @property
    def exceeded(self) -> bool:
        return self.error_fraction > self.max_error_fraction


@dataclass
class ModelUsed:
    source: str = ""
    revision: str | None = None
    """as asked for (a branch, tag or commit), None for local checkpoints"""
    commit: str | None = None
    """the hub commit every inference actor loaded"""
    weights_sha256: str = ""
    preprocessor_file: str | None = None
    """the checkpoint file the preprocessing came from; None: defaults (see `warnings`)"""
    preprocessing: dict = field(default_factory=dict)
    """the preprocessing settings used, in `preprocessor_config.json` form"""


RELABEL_MODE = "relabel"
"""The `mode` of `vivit-batch relabel`'s report: predictions recomputed, no video decoded."""


@dataclass
class RunReport:
    run_id: str
    started_at: str = ""
    wall_seconds: float = 0.0
    mode: str = "incremental"
    model: ModelUsed = field(default_factory=ModelUsed)
    manifest_rows: int = 0
    rows_written: int = 0
    videos_written: int = 0
    """the videos of those rows (fewer than the rows in segments mode)"""
    skipped_committed: int = 0
    """the manifest's videos whose committed rows the run left as they were (the error rows
    it kept among them)"""
    rows_replaced: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """{"status": {"ok": n, "error": m}, "error_code": {code: n}} of the rows written"""
    error_budget: ErrorBudget = field(default_factory=ErrorBudget)
    throughput: Throughput = field(default_factory=Throughput)
    inference_devices: list[dict] = field(default_factory=list)
    """what each inference actor labelled with: node, device, GPU name and memory or CPU
    threads, precision, torch and CUDA versions (see `device.describe`)"""
    warnings: list[str] = field(default_factory=list)
    sandbox: str = ""
    """the decoding processes' sandbox: `none`, `off`, or the Landlock ABI and what it enforces
    (as the driver's machine offers it; `decode.sandbox=required` makes every node's)"""
    lock_generation: int | None = None
    """how many times the output's lock had been taken when this run took it"""
    resources: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    """what decoding and inference cost per clip on one core, measured before the run for its
    CPU plan (`calibration.StageCosts`, and `failure`); empty for GPU and explicit plans"""
    files: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    stopped_by: str | None = None
    """SIGINT, SIGTERM or SIGHUP where a signal stopped the run, `run.time_limit_s` where its
    time limit did: its report is of what it committed"""

    failed: str | None = None
    """the error that ended the run after it had committed files (its type and message): its
    report is of what it committed"""

    def mark_stopped(self, by: str, account: str) -> None:
        """The report of a command that `by` stopped (a signal's name, or the time limit's key);
        `account`, what it left, among its warnings."""
        self.stopped_by = by
        self.warnings.append(account)

    def mark_failed(self, error: str, account: str) -> None:
        """The report of a run that `error` ended; `account`, what it left, among its warnings."""
        self.failed = error
        self.warnings.append(account)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["error_budget"].update(
            error_fraction=self.error_budget.error_fraction, exceeded=self.error_budget.exceeded
        )
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunReport:
        return _from_dict(cls, data)


def new_run_id() -> str:
    """A run id when `run.run_id` gives none: the UTC start time and a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _from_dict(cls, data: dict):
    """`cls` from its `asdict` form: nested dataclasses rebuilt, unknown keys ignored, missing
    ones left at their defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name not in data:
            continue
        value = data[item.name]
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _from_dict(kind, value)
        values[item.name] = value
    return cls(**values)
