"""Everything checked before any work, and before Ray starts: configuration, checkpoint, labels,
the manifest (one streaming scan, in a process of its own), and that the output can be written
and holds rows of this model or none. Raises `ConfigError` or `CheckpointError` (exit code 2)."""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import subprocess
from dataclasses import dataclass, field, replace

from vivit_batch import storage
from vivit_batch.calibration import Calibration
from vivit_batch.config import JobConfig, ManifestSection, require_job_inputs
from vivit_batch.errors import ConfigError
from vivit_batch.job.resources import plans_from_costs
from vivit_batch.manifest import ManifestSummary, remove_listing
from vivit_batch.manifest import __main__ as scan_process
from vivit_batch.model import CheckpointInfo, VivitConfig, inspect_pretrained
from vivit_batch.output import RESERVED_COLUMNS, Output, require_relabel_finished
from vivit_batch.processor import PREPROCESSOR_FILES, ProcessorConfig
from vivit_batch.stages.decode import DecodeStageOptions
from vivit_batch.video.sandbox import planned as sandbox_planned

log = logging.getLogger("vivit_batch")


@dataclass
class PreparedJob:
    config: JobConfig
    checkpoint: CheckpointInfo
    model_config: VivitConfig
    decode: DecodeStageOptions
    labels: dict[int, str]
    manifest: ManifestSummary
    warnings: list[str] = field(default_factory=list)
    """what the run report and the summary repeat (preprocessing defaults, say)"""
    sandbox: str = "none"
    """the decoding processes' sandbox on this machine, in words (`video.sandbox.planned`)"""
    calibration: Calibration | None = None
    """the stages' costs being measured, for a CPU plan (`start_calibration`)"""

    @property
    def partition_by(self) -> tuple[str, ...]:
        partition = self.config.output.partition_by
        return (partition,) if partition else ()

    @property
    def identity(self) -> dict:
        """What makes rows comparable (the weights and the preprocessing), and the layout."""
        return {
            "model_source": self.config.model.source,
            "weights_sha256": self.checkpoint.weights_sha256,
            "preprocessing": self.decode.processor.to_dict(),
            "sampling": dataclasses.asdict(self.decode.sampling),
            "partition_by": list(self.partition_by),
        }


def prepare_job(config: JobConfig) -> PreparedJob:
    """Everything checked before any work, without Ray: raises ConfigError or CheckpointError."""
    require_job_inputs(config)
    sandbox, no_sandbox = sandbox_planned(config.decode.sandbox, config.decode.isolation)
    checkpoint, model_config = inspect_pretrained(config.model.source, config.model.revision)
    sampling = config.sampling
    if sampling.num_frames is None:
        sampling = replace(sampling, num_frames=model_config.num_frames)
    processor = processor_for(config, checkpoint.processor)
    if sampling.spatial_crops == "three" and not processor.do_center_crop:
        raise ConfigError(
            f"sampling.spatial_crops=three needs a crop size, and model {config.model.source}'s "
            "preprocessor_config.json has no center crop: use sampling.spatial_crops=center"
        )
    options = storage.job_storage_options(config)
    # the stall timeout also bounds the version checks' requests to the sources
    source_options = storage.with_read_timeout(options, config.decode.stall_timeout_s)
    decode = DecodeStageOptions(sampling, processor, config.decode, source_options)
    labels = read_labels(config.model.labels, model_config.num_labels, options)
    manifest = scan_apart(config.manifest, RESERVED_COLUMNS, options)
    if manifest.problems:
        raise ConfigError("\n".join(manifest.problems))
    recorded = Output(config.output.uri, options).checked_identity()
    job = PreparedJob(
        config,
        checkpoint,
        model_config,
        decode,
        labels or model_config.id2label,
        manifest,
        warnings=preprocessing_warnings(checkpoint) + ([no_sandbox] if no_sandbox else []),
        sandbox=sandbox,
    )
    check_identity(job, recorded)
    for warning in job.warnings:
        log.warning(warning)
    return job


def start_calibration(job: PreparedJob) -> None:
    """Start measuring what each stage costs per clip (in a process of its own: `calibration`)
    when a plan may need it (CPU inference, not every pool size set): the CLI calls this before
    Ray starts, so that the two overlap; `run_job` measures when nobody did."""
    if job.calibration is None and plans_from_costs(job.config.resources):
        job.calibration = Calibration(
            job.decode,
            job.model_config,
            job.manifest.first_uris,
            job.config.resources.clips_per_forward,
        )


def preprocessing_warnings(checkpoint: CheckpointInfo) -> list[str]:
    if checkpoint.processor_file:
        return []
    return [
        f"model {checkpoint.source} has neither {' nor '.join(PREPROCESSOR_FILES)}: "
        "preprocessing with VivitImageProcessor's defaults (recorded in the run report under "
        "model.preprocessing). If the model was trained with other preprocessing its labels are "
        "wrong: put its preprocessor_config.json beside its config.json"
    ]


def scan_apart(
    section: ManifestSection, reserved_columns: frozenset[str], options: dict
) -> ManifestSummary:
    """`scan_manifest` in a child process (`python -m vivit_batch.manifest`): the driver keeps
    none of its memory. A listing file it wrote is removed when this process ends (the run
    reads it until then)."""
    scan = subprocess.run(
        scan_process.COMMAND,
        input=scan_process.request(section, reserved_columns, options),
        capture_output=True,
        check=False,
    )
    if scan.returncode != 0:
        raise RuntimeError(
            f"the manifest scan failed (exit code {scan.returncode}): "
            + scan.stderr.decode(errors="replace")[-2000:]
        )
    summary = scan_process.summary_from(scan.stdout)
    if summary.listing:
        atexit.register(remove_listing, summary.listing)
    return summary


def check_identity(job: PreparedJob, recorded: dict | None) -> None:
    """One model, preprocessing and layout per output dataset: refuse to mix rows from another
    (`recorded`, the output's identity), unless this run starts a new version of the dataset
    (`run.new_version`); and one taxonomy: refuse an output whose relabel stopped midway."""
    require_relabel_finished(recorded, job.config.output.uri, "run")
    current = job.identity
    differ = identity_differences(recorded, current)
    if recorded is None or not differ or job.config.run.new_version:
        return
    raise ConfigError(
        f"output {job.config.output.uri} holds rows from model {recorded['model_source']} "
        f"(weights sha256 {recorded['weights_sha256'][:12]}, partition_by "
        f"{recorded.get('partition_by', [])}); this run's {' and '.join(differ)} differ (model "
        f"{current['model_source']}, weights sha256 {current['weights_sha256'][:12]}, "
        f"partition_by {current['partition_by']}). Rows from different models, preprocessing or "
        "layouts must not share a dataset: write this run to a new output, or pass "
        "--new-version to move the current rows aside (under _versions/) and relabel the "
        "manifest into this output"
    )


def identity_differences(recorded: dict | None, current: dict) -> list[str]:
    """The keys of the dataset identity in which `current` differs from `recorded`."""
    if recorded is None:
        return []
    recorded = {"partition_by": [], **recorded}  # an identity that does not say has none
    keys = ("weights_sha256", "preprocessing", "sampling", "partition_by")
    return [key for key in keys if recorded.get(key) != current[key]]


def processor_for(config: JobConfig, processor: ProcessorConfig) -> ProcessorConfig:
    if config.model.normalization == "scenic":
        return replace(
            processor, do_rescale=True, rescale_factor=1 / 127.5, offset=True, do_normalize=False
        )
    return processor


def read_labels(path: str | None, num_labels: int, options: dict) -> dict[int, str] | None:
    """Class names from a file: one per line in id order, or a JSON object {id: name}."""
    if not path:
        return None
    try:
        filesystem, file = storage.filesystem(path, options)
        with filesystem.open(file, "r") as stream:
            text = stream.read()
    except FileNotFoundError as error:
        raise ConfigError(f"model.labels: {path} does not exist") from error
    if path.endswith(".json"):
        labels = {int(k): str(v) for k, v in json.loads(text).items()}
    else:
        labels = dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))
    if sorted(labels) != list(range(num_labels)):
        raise ConfigError(
            f"model.labels: {path} names {len(labels)} classes, the model has {num_labels}"
        )
    return labels
