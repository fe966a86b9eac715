"""The job configuration: sections of keys, each declared once with its type, default, help and
accepted values (`settings.setting`), read from YAML and `--set key=value`, validated once.

Every key is `section.name`; the YAML file mirrors the sections. Every section is declared here,
`sampling` and `decode` included, and this module imports no other of the package's but
`settings` and `errors`: the layers that honour a setting import it from here, and reading a
configuration imports neither torch nor PyAV. An unknown key is an error that suggests
the closest valid one; every problem is a `ConfigError` naming the key (exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vivit_batch.errors import ConfigError
from vivit_batch.settings import (
    BYTES,
    SECONDS,
    TEXTS,
    Section,
    brief,
    coerce,
    cut,
    rule_of,
    setting,
)

__all__ = ["JobConfig", "all_keys", "load_config"]

MANIFEST_FORMATS = ("auto", "csv", "jsonl", "parquet", "txt", "videos")
RUN_MODES = ("incremental", "rerun_errors", "force")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "inductor")
TEMPORAL_VIEWS = ("center", "uniform", "random", "segments")
SPATIAL_CROPS = ("center", "three")
ISOLATION = ("process", "none")
SANDBOX = ("auto", "required", "off")
DECODE_DEVICES = ("auto", "cpu", "cuda")
NVDEC_REQUIREMENT = "pynvvideocodec==2.2.4"
"""What NVDEC decoding needs on the GPU nodes (the `nvdec` extra; README, Decoding on the GPU)."""


@dataclass(frozen=True)
class ManifestSection(Section, name="manifest"):
    uri: str = setting(
        "", "manifest file (csv/jsonl/parquet/txt), or a directory, glob or s3:// prefix of videos"
    )
    format: str = setting(
        "auto",
        "auto (by extension), csv, jsonl, parquet, txt or videos (list a directory/glob/prefix)",
        choices=MANIFEST_FORMATS,
    )
    allow_http: bool = setting(
        False, "accept http(s):// video URIs (otherwise a manifest that names one is refused)"
    )
    http_allow_hosts: TEXTS = setting(
        (),
        "hosts (or host:port) that http(s) sources may reach although they resolve to "
        "loopback, link-local, private or other non-public addresses",
    )
    column_prefix: str | None = setting(
        None,
        "write the manifest's own columns (all but uri and video_id) under this prefix, e.g. "
        "manifest_ keeps a ground-truth `label` column as manifest_label",
        pattern=r"[A-Za-z][A-Za-z0-9_]{0,63}",
        pattern_help="a letter, then up to 63 letters, digits or '_'",
    )
    max_cell_bytes: int = setting(
        64 * 2**10,
        "largest manifest value (one column of one row, uri included; lists and objects "
        "summed): a larger one is refused before any work, since the value is repeated on "
        "every output row of its video (each segment's, in segments mode)",
        unit=BYTES,
        minimum=1,
    )


@dataclass(frozen=True)
class OutputSection(Section, name="output"):
    uri: str = setting("", "directory (local or s3://) of the Parquet dataset")
    rows_per_file: int = setting(5000, "most rows in one Parquet file", minimum=1)
    commit_every_s: float = setting(
        300.0,
        "labelled rows wait at most about this long before they are committed, in a file of "
        "fewer than rows_per_file rows if need be: the most labelling a crash loses (a stop "
        "commits the rows held first)",
        unit=SECONDS,
        above=0,
    )
    max_held_bytes: int = setting(
        2**30,
        "most bytes of labelled rows the driver holds; past it, the whole videos in are staged "
        "at once (smaller files), and in temporal_views=segments, when the videos still waiting "
        "for their last chunk alone hold more, the one holding most becomes a too_large error "
        "row",
        unit=BYTES,
        minimum=1,
    )
    partition_by: str | None = setting(
        None,
        "run_date: each run's rows under a run_date=YYYY-MM-DD/ folder (UTC date of its start)",
        choices=("run_date",),
    )
    compact_after_files: int = setting(
        0,
        "at the end of a run that committed files, compact the folder they went to (as "
        "`vivit-batch compact`) when it holds more than this many files below rows_per_file "
        "rows; 0: never (compaction rewrites committed files: see the README's Compaction)",
        minimum=0,
    )
    compact_offline: bool = setting(
        False,
        "compact_after_files also where no folder can be swapped atomically (S3, an "
        "unpartitioned output): merge by merge, so a reader could see a merge's rows twice "
        "while its sources are deleted; set it only where nothing reads the output during runs",
    )


@dataclass(frozen=True)
class StorageSection(Section, name="storage"):
    """Remote storage (s3fs). Credentials come from the AWS environment variables, profile or
    instance role, never from this file, so they cannot leak into the run report."""

    endpoint_url: str | None = setting(
        None, "S3-compatible endpoint (MinIO, Ceph, R2, ...); default: AWS_ENDPOINT_URL or AWS"
    )
    region: str | None = setting(None, "default: AWS_DEFAULT_REGION")
    profile: str | None = setting(None, "a profile of ~/.aws/credentials; default: AWS_PROFILE")
    anon: bool = setting(False, "unsigned requests, for public buckets")
    max_attempts: int = setting(
        10, "attempts per request on throttling, 5xx, resets and timeouts (backoff)", minimum=1
    )
    timeout_s: float = setting(60.0, "connect and read timeout per request", unit=SECONDS, above=0)


@dataclass(frozen=True)
class ModelSection(Section, name="model"):
    source: str = setting("", "hub repo id, local checkpoint directory, or weights file")
    revision: str | None = setting(None, "hub revision (branch, tag or commit)")
    precision: str = setting(
        "fp32",
        "fp32, or bf16/fp16 autocast on CUDA (a CPU actor labels in fp32, with a warning)",
        choices=PRECISIONS,
    )
    top_k: int = setting(5, "labels and scores kept per video", minimum=1)
    compile: str = setting(
        "none",
        "none, or inductor: torch.compile the model in each inference actor (fused kernels; "
        "compiled when the actor starts on a GPU, on its first batch on a CPU)",
        choices=COMPILE_MODES,
    )
    labels: str | None = setting(
        None, "class names file: one per line in id order, or a JSON object id -> name"
    )
    normalization: str = setting(
        "checkpoint",
        "checkpoint: preprocessor_config.json's rescale + normalise (Hugging Face's logits); "
        "scenic: x/127.5 - 1, as the original ViViT was trained",
        choices=("checkpoint", "scenic"),
    )


@dataclass(frozen=True)
class SamplingConfig(Section, name="sampling"):
    """Which frames of a video make its clips (the configuration's `sampling` section)."""

    num_frames: int | None = setting(
        None, "frames per clip; default: the checkpoint's num_frames", minimum=1
    )
    frame_sample_rate: int = setting(
        4, "stride between sampled frames: a clip spans num_frames x this", minimum=1
    )
    temporal_views: str = setting(
        "center",
        "center: one clip in the middle; uniform: num_temporal_views clips evenly spaced from "
        "the start to the end (the paper's protocol); random: one clip at a place reproducible "
        "from (seed, video id); segments: one row per segment of the video along its whole "
        "timeline (see segment_s)",
        choices=TEMPORAL_VIEWS,
    )
    num_temporal_views: int = setting(1, "clips per video with temporal_views=uniform", minimum=1)
    segment_s: float | None = setting(
        None,
        "temporal_views=segments: length of a segment, each labelled from one clip of num_frames "
        "frames spread across it; default: one clip's span (num_frames x frame_sample_rate "
        "frames). The last segment ends at the video's end, shorter unless the length divides",
        unit=SECONDS,
        above=0,
    )
    segment_stride_s: float | None = setting(
        None,
        "temporal_views=segments: a segment starts every this many seconds (less than "
        "segment_s: overlapping segments); default: segment_s",
        unit=SECONDS,
        above=0,
    )
    spatial_crops: str = setting(
        "center",
        "center, or three: left, centre and right along the long side (the paper's 3-crop)",
        choices=SPATIAL_CROPS,
    )
    seed: int = setting(0, "run seed for temporal_views=random", minimum=0)

    def combination_problems(self) -> list[str]:
        problems = []
        if self.num_temporal_views > 1 and self.temporal_views != "uniform":
            problems.append(
                f"sampling.num_temporal_views={self.num_temporal_views} needs "
                f"sampling.temporal_views=uniform (it is {self.temporal_views})"
            )
        for name in ("segment_s", "segment_stride_s"):
            if getattr(self, name) is not None and not self.segments:
                problems.append(
                    f"sampling.{name} needs sampling.temporal_views=segments "
                    f"(it is {self.temporal_views})"
                )
        return problems

    @property
    def segments(self) -> bool:
        return self.temporal_views == "segments"

    @property
    def frames(self) -> int:
        """`num_frames`, which the job fills in from the checkpoint when it is not set."""
        if self.num_frames is None:
            raise ConfigError("sampling.num_frames is not set (the job takes the checkpoint's)")
        return self.num_frames

    @property
    def span(self) -> int:
        """Frames covered by one clip."""
        return self.frames * self.frame_sample_rate

    @property
    def num_spatial_crops(self) -> int:
        return 3 if self.spatial_crops == "three" else 1

    @property
    def num_views(self) -> int:
        return self.num_temporal_views * self.num_spatial_crops


@dataclass(frozen=True)
class DecodeConfig(Section, name="decode"):
    """How videos are decoded and what one may cost (the configuration's `decode` section);
    a cap of None means no cap."""

    threads: int = setting(1, "PyAV decoder threads per decode actor", minimum=1)
    max_pixels: int | None = setting(
        7680 * 4320, "frames with more pixels make a too_large row (default: 8K)", minimum=1
    )
    max_duration_s: float | None = setting(
        6 * 3600.0, "longer videos make a too_large row", unit=SECONDS, above=0
    )
    max_file_bytes: int | None = setting(
        50 * 2**30, "larger files make a too_large row", unit=BYTES, minimum=1
    )
    timeout_s: float | None = setting(
        300.0,
        "a video taking longer makes a timeout row (checked between packets and frames; with "
        "isolation=process its process is also killed a few seconds later)",
        unit=SECONDS,
        above=0,
    )
    stall_timeout_s: float | None = setting(
        30.0,
        "an http(s) or S3 source that sends no bytes this long makes a timeout row (named pipes "
        "and devices make an unreadable row at once)",
        unit=SECONDS,
        above=0,
    )
    max_frames_per_clip: int | None = setting(
        None,
        "most frames decoded for one clip, counting those decoded only to reach it",
        minimum=1,
    )
    segments_per_chunk: int = setting(
        16,
        "temporal_views=segments: segments a decode actor sends on to inference at a time (its "
        "memory holds about two chunks of clips; decode.timeout_s applies to each chunk)",
        minimum=1,
    )
    isolation: str = setting(
        "process",
        "process: decode in a child process per actor, killed and replaced when a video hangs "
        "or crashes it; none: in the actor itself (no hard timeout; a crash takes the actor)",
        choices=ISOLATION,
    )
    crash_retries: int = setting(
        1,
        "attempts after the first when the decoding process dies on a video; then decode_crash",
        minimum=0,
    )
    max_memory_bytes: int | None = setting(
        4 * 2**30,
        "memory cap of the decoding process (isolation=process; an 8K H.264 clip peaks near 0.9 "
        "GiB with 4 threads); a video needing more makes a too_large row",
        unit=BYTES,
        minimum=1,
    )
    sandbox: str = setting(
        "auto",
        "isolation=process: the decoding processes read no file and reach no network "
        "(Landlock, seccomp); auto: when the kernel has them, else a warning; required: exit 2 "
        "without them; off: never",
        choices=SANDBOX,
    )
    device: str = setting(
        "auto",
        "where videos are decoded: cpu; cuda: on the GPUs' NVDEC engines only (PyNvVideoCodec; "
        "what NVDEC cannot decode goes to the CPU path in the same process); auto: both where "
        "the cluster has GPUs for inference, the CPU alone elsewhere",
        choices=DECODE_DEVICES,
    )
    gpu_decoders: int = setting(
        7,
        "device=auto|cuda: decoding processes per GPU on its NVDEC engines (H100 and H200 "
        "have 7, A100 5, L4 4)",
        minimum=1,
    )

    def combination_problems(self) -> list[str]:
        problems = []
        if self.sandbox == "required" and self.isolation != "process":
            problems.append("decode.sandbox=required needs decode.isolation=process")
        if self.sandbox == "required" and self.device == "cuda":
            problems.append(
                "decode.sandbox=required needs decode.device=cpu or auto: the GPU's decoding "
                "processes are filtered by seccomp but not confined by Landlock (auto then "
                "decodes on the CPU alone)"
            )
        return problems


@dataclass(frozen=True)
class ResourcesSection(Section, name="resources"):
    decode_actors: int | None = setting(
        None,
        "decode actor pool size; default: with GPUs the CPUs left / decode.threads, without "
        "them the CPUs' share that the stages' measured costs give decoding (see the run "
        "report's calibration), at most one per video",
        minimum=1,
    )
    inference_actors: int | None = setting(
        None,
        "inference actor pool size; default: one per GPU, without GPUs enough actors of "
        "inference_cpus threads for the CPUs' share that the measured costs give torch",
        minimum=1,
    )
    max_decode_actors: int | None = setting(
        None,
        "most decode actors as nodes join the run (autoscaling clusters); default: "
        "decode_actors if set, else what the autoscaler's largest cluster holds, else the "
        "start size",
        minimum=1,
    )
    max_inference_actors: int | None = setting(
        None,
        "most inference actors as nodes join the run; default: inference_actors if set, else "
        "one per GPU (or per inference_cpus of half the CPUs) of the autoscaler's largest "
        "cluster, else the start size",
        minimum=1,
    )
    inference_cpus: int | None = setting(
        None,
        "torch threads per CPU inference actor; default: the CPUs' share that the measured "
        "costs give torch, at most 8 per actor",
        minimum=1,
    )
    inference_gpus: float | None = setting(
        None,
        "GPUs per inference actor; default: 1 with GPUs, else 0. 0 labels on the CPU (with "
        "inference_cpus threads) also on a GPU cluster; 0.5 puts two actors on a GPU",
        minimum=0,
    )
    batch_size: int = setting(8, "videos per inference batch", minimum=1)
    decode_batch_size: int | None = setting(
        None,
        "videos per decode call; each call's clips travel as one block, so lower it for "
        "videos with many views; default: 16, fewer when the manifest is too short to give "
        "each decode actor four calls (64 where inference runs on GPUs)",
        minimum=1,
    )
    clips_per_forward: int = setting(
        8, "clips per forward pass (views of several videos share one)", minimum=1
    )

    def combination_problems(self) -> list[str]:
        return [
            f"resources.{name}={size} is above resources.max_{name}={most}: raise the "
            f"maximum or lower the size"
            for name, size, most in (
                ("decode_actors", self.decode_actors, self.max_decode_actors),
                ("inference_actors", self.inference_actors, self.max_inference_actors),
            )
            if size and most and size > most
        ]


@dataclass(frozen=True)
class RunSection(Section, name="run"):
    max_error_fraction: float = setting(
        0.05,
        "exit code 3 above this share of the manifest's videos with error rows (this run's and "
        "earlier runs' alike)",
        minimum=0,
        maximum=1,
    )
    mode: str = setting(
        "incremental",
        "incremental: skip videos already committed; rerun_errors (--rerun-errors): also "
        "relabel error rows; force (--force): relabel every video",
        choices=RUN_MODES,
    )
    new_version: bool = setting(
        False,
        "--new-version: when the output holds another model's rows, move them under "
        "_versions/ and label the manifest into the output, instead of refusing",
    )
    refresh_changed: bool = setting(
        False, "--refresh-changed: also relabel videos whose file changed since their row"
    )
    lock_stale_after_s: float = setting(
        120.0,
        "this run renews its lock every quarter of this; another run takes the lock over after "
        "watching it unchanged this long",
        unit=SECONDS,
        above=0,
    )
    lock_wait_s: float | None = setting(
        None,
        "most to wait for a lock another run holds (on local disk its guard file too) before "
        "exit 2; default: until it is stale, and for the guard one stale period",
        unit=SECONDS,
        minimum=0,
    )
    locking: str = setting(
        "conditional",
        "conditional: one run at a time (local disk, not network or FUSE filesystems, or S3 "
        "with conditional writes); none: no lock, for stores without them (you make sure that "
        "runs never overlap)",
        choices=("conditional", "none"),
    )
    run_id: str | None = setting(
        None,
        "names the output files and the report; default: the start time and a random suffix",
        pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        pattern_help="1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )
    videos_per_part: int = setting(
        200_000,
        "a manifest with more videos to label is labelled in parts of at most this many, each "
        "its own Ray Data execution: the driver's memory grows with an execution's blocks and "
        "is given back between parts",
        minimum=1,
    )
    time_limit_s: float | None = setting(
        None,
        "stop the run this long after it starts, as SIGTERM would (it commits the rows it "
        "holds, writes its report, releases the lock) and exit 124; the next run labels the "
        "rest. Leave the commit time under any deadline outside it (a scheduler's, KubeRay's). "
        "relabel and compact stop by it too",
        unit=SECONDS,
        above=0,
    )
    progress_every_s: float = setting(
        60.0,
        "when the output is not a terminal, log a progress line (done/total, clips/s, ETA, errors) "
        "this often, instead of Ray Data's progress bars",
        unit=SECONDS,
        above=0,
    )


@dataclass(frozen=True)
class JobConfig:
    manifest: ManifestSection = field(default_factory=ManifestSection)
    output: OutputSection = field(default_factory=OutputSection)
    storage: StorageSection = field(default_factory=StorageSection)
    model: ModelSection = field(default_factory=ModelSection)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS: tuple[type[Section], ...] = tuple(typing.get_type_hints(JobConfig).values())
FLAG_KEYS = {
    "manifest_uri": "manifest.uri",
    "output_uri": "output.uri",
    "model_source": "model.source",
    "run_mode": "run.mode",
    "refresh_changed": "run.refresh_changed",
    "new_version": "run.new_version",
}


def all_keys() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every valid `section.name`, with its field (default, rule) and type."""
    return {key: value for section in SECTIONS for key, value in section.keys().items()}


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
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
        values[key.strip()] = _parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    for flag, value in flags.items():
        if value is not None:
            values[FLAG_KEYS[flag]] = value
    return build_config(values)


def build_config(values: dict[str, object]) -> JobConfig:
    """Validate flat `section.name` values into a JobConfig; every problem in one error."""
    keys = all_keys()
    problems = [_unknown_key_message(key, keys) for key in values if key not in keys]
    sections = {}
    for section in SECTIONS:
        chosen = {}
        for key, (item, kind) in section.keys().items():
            if key in values:
                try:
                    chosen[item.name] = coerce(key, kind, rule_of(item), values[key])
                except ConfigError as error:
                    problems += error.problems
        try:
            sections[section.name] = section(**chosen)
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError.of(problems)
    return JobConfig(**sections)  # type: ignore[arg-type]  # each name gets its own section


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
        text = path.read_text()
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} does not exist") from error
    data = _parse_yaml(text, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {brief(data)}")
    return data


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases (`*name`): a few hundred bytes of nested aliases expand to billions
    of values ("billion laughs"), and a configuration has no need of them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{cut(event.anchor, 40)}) "
                "are not accepted in a configuration: write the value out"
            )
        return super().compose_node(parent, index)


def _parse_yaml(text: str, where: str) -> object:
    try:
        return yaml.load(text, Loader=_NoAliases)  # a SafeLoader: builds plain data only
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {cut(str(error), 300)}") from error


def _flatten(data: dict) -> dict[str, object]:
    flat = {}
    for section, body in data.items():
        if isinstance(body, dict):
            flat.update({f"{section}.{name}": value for name, value in body.items()})
        else:
            flat[str(section)] = body
    return flat


def _unknown_key_message(key: str, keys: dict) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; run `vivit-batch run --help`"
    return f"unknown key {brief(key)}{hint}"
