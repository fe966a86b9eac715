"""The job configuration: typed sections, read from YAML and `--set key=value`, validated once.

Every key is `section.name`; the YAML file mirrors the sections. An unknown key is an error that
suggests the closest valid one. `ConfigError` means "fix the configuration" (exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """The configuration or the manifest is wrong; nothing has been processed."""


@dataclass(frozen=True)
class ManifestSection:
    uri: str = ""
    """manifest file (csv/jsonl/parquet/txt), or a directory, glob or s3:// prefix of videos"""
    format: str = "auto"
    """auto (by extension), csv, jsonl, parquet, txt or videos (list a directory/prefix/glob)"""
    allow_http: bool = False
    """accept http(s):// video URIs (otherwise a manifest that names one is refused)"""


@dataclass(frozen=True)
class OutputSection:
    uri: str = ""
    """directory (local or s3://) of the Parquet dataset"""
    rows_per_file: int = 5000
    """upper bound on rows in one Parquet file"""
    partition_by: str | None = None
    """run_date: each run's rows under a `run_date=YYYY-MM-DD/` folder (UTC date of its start)"""


@dataclass(frozen=True)
class StorageSection:
    """Remote storage (s3fs). Credentials come from the AWS environment variables, profile or
    instance role, never from this file, so they cannot leak into the run report."""

    endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, Ceph, ...); default: AWS_ENDPOINT_URL or AWS itself"""
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    """unsigned requests, for public buckets"""
    max_attempts: int = 10
    """attempts per request on throttling, 5xx, resets and timeouts (with backoff)"""
    timeout_s: float = 60
    """connect and read timeout per request"""


@dataclass(frozen=True)
class ModelSection:
    source: str = ""
    """hub repo id, local checkpoint directory, or weights file"""
    revision: str | None = None
    precision: str = "fp32"
    """fp32, or bf16/fp16 autocast on CUDA"""
    top_k: int = 5
    labels: str | None = None
    """file of class names, one per line in id order (or a JSON object id -> name)"""
    normalization: str = "checkpoint"
    """checkpoint: the preprocessor_config.json's rescale+normalise (Hugging Face's logits);
    scenic: x/127.5 - 1, what the original ViViT was trained with"""


@dataclass(frozen=True)
class SamplingSection:
    num_frames: int | None = None
    """frames per clip; default: the checkpoint's num_frames"""
    frame_sample_rate: int = 4
    temporal_views: str = "center"
    """center, uniform or random"""
    num_temporal_views: int = 1
    spatial_crops: str = "center"
    """center or three"""
    seed: int = 0


@dataclass(frozen=True)
class DecodeSection:
    threads: int = 1
    """PyAV threads per decode actor"""
    max_pixels: int | None = 7680 * 4320
    max_duration_s: float | None = 6 * 3600
    max_file_bytes: int | None = 50 * 2**30
    timeout_s: float | None = 300
    max_frames_per_clip: int | None = None
    """most frames decoded for one clip, counting those decoded only to reach it"""
    isolation: str = "process"
    """process: decode in a child process per actor, killed and replaced when a video hangs or
    crashes it; none: in the actor itself (no hard timeout, a crash takes the actor)"""
    crash_retries: int = 1
    """attempts after the first when the decoding process dies on a video; then decode_crash"""
    max_memory_bytes: int | None = 4 * 2**30
    """memory cap of the decoding process (isolation=process); a video needing more: too_large"""


@dataclass(frozen=True)
class ResourcesSection:
    decode_actors: int | None = None
    """default: the CPUs left after the inference actors, divided by decode.threads"""
    inference_actors: int | None = None
    """default: one per GPU; one on a CPU-only cluster"""
    inference_cpus: int | None = None
    """CPUs (torch threads) per CPU inference actor; default: half the cluster's CPUs"""
    inference_gpus: float | None = None
    """GPUs per inference actor; default: 1 on a cluster with GPUs, else 0. 0 labels on the
    CPU (with inference_cpus threads) also on a GPU cluster; 0.5 puts two actors on a GPU"""
    batch_size: int = 8
    """videos per inference batch"""
    decode_batch_size: int = 16
    """videos per decode call (amortises Ray's per-call cost over small videos); each call's
    clips travel as one block, so lower it when videos have many views"""
    clips_per_forward: int = 8


@dataclass(frozen=True)
class RunSection:
    max_error_fraction: float = 0.05
    """above this share of error rows the run exits with code 3"""
    mode: str = "incremental"
    """incremental: skip videos already committed in the output; rerun_errors: also relabel
    their error rows; force: relabel everything (earlier rows are replaced)"""
    new_version: bool = False
    """when the output holds rows of another model, preprocessing or layout: move them aside
    (under `_versions/`) and label the manifest into the output, instead of refusing"""
    refresh_changed: bool = False
    """also relabel committed videos whose source changed (size, then ETag or modification
    time) since their row was written"""
    lock_stale_after_s: float = 120
    """this run renews its lock on the output every quarter of this; another run takes the
    lock over once it has watched it unchanged this long (this run's value, written in the
    lock, is what the other run waits)"""
    lock_wait_s: float | None = None
    """most seconds to wait for a lock another run holds before giving up (exit 2); default:
    as long as it takes that lock to go stale"""
    locking: str = "conditional"
    """conditional: one run at a time, through conditional writes (local disk, or S3 and
    stores with If-None-Match/If-Match); none: no lock, for stores without them (you make sure
    that runs never overlap)"""
    run_id: str | None = None
    """default: UTC time plus a random suffix"""


@dataclass(frozen=True)
class JobConfig:
    manifest: ManifestSection = field(default_factory=ManifestSection)
    output: OutputSection = field(default_factory=OutputSection)
    storage: StorageSection = field(default_factory=StorageSection)
    model: ModelSection = field(default_factory=ModelSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    decode: DecodeSection = field(default_factory=DecodeSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "manifest.format": {"auto", "csv", "jsonl", "parquet", "txt", "videos"},
    "output.partition_by": {"run_date"},
    "run.mode": {"incremental", "rerun_errors", "force"},
    "run.locking": {"conditional", "none"},
    "decode.isolation": {"process", "none"},
    "model.precision": {"fp32", "bf16", "fp16"},
    "model.normalization": {"checkpoint", "scenic"},
    "sampling.temporal_views": {"center", "uniform", "random"},
    "sampling.spatial_crops": {"center", "three"},
}
POSITIVE = {
    "output.rows_per_file",
    "model.top_k",
    "sampling.num_frames",
    "sampling.frame_sample_rate",
    "sampling.num_temporal_views",
    "decode.threads",
    "decode.max_pixels",
    "decode.max_duration_s",
    "decode.max_file_bytes",
    "decode.timeout_s",
    "decode.max_frames_per_clip",
    "decode.max_memory_bytes",
    "resources.decode_actors",
    "resources.inference_actors",
    "resources.inference_cpus",
    "resources.batch_size",
    "resources.decode_batch_size",
    "storage.max_attempts",
    "storage.timeout_s",
    "run.lock_stale_after_s",
    "resources.clips_per_forward",
}


NON_NEGATIVE = {
    "decode.crash_retries",
    "sampling.seed",
    "run.lock_wait_s",
    "resources.inference_gpus",
}


def all_keys() -> dict[str, type]:
    """Every valid `section.name` with its type."""
    keys = {}
    for section in dataclasses.fields(JobConfig):
        hints = typing.get_type_hints(typing.get_type_hints(JobConfig)[section.name])
        for name, kind in hints.items():
            keys[f"{section.name}.{name}"] = kind
    return keys


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] = (),
    **flags: str | bool | None,
) -> JobConfig:
    """YAML file, then `--set key=value` overrides, then explicit flags (e.g. manifest_uri=...)."""
    values: dict[str, object] = {}
    if config_file:
        values.update(_flatten(_read_yaml(Path(config_file))))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set model.top_k=3")
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    flag_keys = {
        "manifest_uri": "manifest.uri",
        "output_uri": "output.uri",
        "model_source": "model.source",
        "run_mode": "run.mode",
        "refresh_changed": "run.refresh_changed",
        "new_version": "run.new_version",
    }
    for flag, value in flags.items():
        if value is not None:
            values[flag_keys[flag]] = value
    return build_config(values)


def build_config(values: dict[str, object]) -> JobConfig:
    """Validate flat `section.name` values into a JobConfig; every problem in one error."""
    keys = all_keys()
    problems = [_unknown_key_message(key, keys) for key in values if key not in keys]
    typed = {}
    for key, value in values.items():
        if key in keys:
            try:
                typed[key] = _coerce(key, value, keys[key])
            except ConfigError as error:
                problems.append(str(error))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    sections = {}
    for section in dataclasses.fields(JobConfig):
        prefix = section.name + "."
        chosen = {k[len(prefix) :]: v for k, v in typed.items() if k.startswith(prefix)}
        sections[section.name] = dataclasses.replace(section.default_factory(), **chosen)
    return JobConfig(**sections)


def require_job_inputs(config: JobConfig) -> None:
    missing = [
        flag
        for flag, value in (
            ("--manifest", config.manifest.uri),
            ("--output", config.output.uri),
            ("--model", config.model.source),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or set it in the --config file)")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} does not exist") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {data!r}")
    return data


def _flatten(data: dict) -> dict[str, object]:
    flat = {}
    for section, body in data.items():
        if isinstance(body, dict):
            flat.update({f"{section}.{name}": value for name, value in body.items()})
        else:
            flat[str(section)] = body
    return flat


def _unknown_key_message(key: str, keys: dict[str, type]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; run `vivit-batch run --help`"
    return f"unknown key {key!r}{hint}"


def _coerce(key: str, value: object, kind: type) -> object:
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must be set")
    base = next(t for t in allowed if t is not type(None))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {base.__name__}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {sorted(CHOICES[key])}, got {value!r}")
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    if key in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key} must be 0 or more, got {value!r}")
    if key == "run.max_error_fraction" and not 0 <= value <= 1:
        raise ConfigError(f"{key} must be between 0 and 1, got {value!r}")
    return value
