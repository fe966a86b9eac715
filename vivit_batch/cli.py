"""`vivit-batch run | validate | report | demo`.

Exit codes: 0 run completed (per-video errors within the error budget), 2 bad configuration or
manifest (nothing processed), 3 error budget exceeded, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence

from vivit_batch.config import ConfigError, JobConfig, all_keys, load_config
from vivit_batch.model import CheckpointError
from vivit_batch.output import LockLost, RunReport
from vivit_batch.output.schema import INFERENCE_DEVICE
from vivit_batch.redact import redact
from vivit_batch.settings import describe, rule_of, show

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_ERROR_BUDGET = 0, 1, 2, 3

EPILOG = """\
examples:
  vivit-batch run --manifest videos.csv --output out/ --model google/vivit-b-16x2-kinetics400
  vivit-batch run --manifest 's3://bucket/raw/' --output s3://bucket/labels/ \\
      --model ./checkpoint --config configs/kinetics400-4x3.yaml --set resources.batch_size=4
  vivit-batch report out/

manifest: CSV/JSONL/Parquet with a `uri` column (optional `video_id`; other columns pass
through), a text file of URIs, or a directory/glob/prefix of videos.
exit codes: 0 done, 2 bad config or manifest, 3 too many per-video errors, 1 other failure.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.handler(args)
    except (ConfigError, CheckpointError) as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)  # it may quote manifest lines
        return EXIT_CONFIG
    except LockLost as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vivit-batch",
        description="Label video datasets with ViViT on Ray: one Parquet row per video.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="label every video of a manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=config_reference(),
    )
    add_job_arguments(run)
    run.set_defaults(handler=run_command)
    validate = commands.add_parser(
        "validate",
        help="check config, manifest and model, label a few videos; write nothing",
    )
    add_job_arguments(validate)
    validate.add_argument("--videos", type=int, default=3, help="videos to decode and label")
    validate.set_defaults(handler=validate_command)
    report = commands.add_parser("report", help="summarise an output dataset")
    report.add_argument("output", help="the --output of earlier runs")
    report.set_defaults(handler=report_command)
    demo = commands.add_parser("demo", help="generate sample videos and label them offline")
    demo.add_argument("--dir", default="demo-output", help="where samples and output go")
    demo.add_argument("--videos", type=int, default=24)
    demo.add_argument("--seed", type=int, default=2024)
    demo.set_defaults(handler=demo_command)
    return parser


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="manifest file, or directory/glob/prefix of videos")
    parser.add_argument("--output", help="output dataset directory (local or s3://)")
    parser.add_argument("--model", help="hub repo id, checkpoint directory or weights file")
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set sampling.num_frames=16",
    )
    parser.add_argument(
        "--rerun-errors",
        action="store_const",
        const="rerun_errors",
        dest="mode",
        help="also relabel videos whose committed rows are errors",
    )
    parser.add_argument(
        "--force",
        action="store_const",
        const="force",
        dest="mode",
        help="relabel every video, replacing rows already in the output",
    )
    parser.add_argument(
        "--refresh-changed",
        action="store_const",
        const=True,
        help="also relabel videos whose file changed since their row was written",
    )
    parser.add_argument(
        "--new-version",
        action="store_const",
        const=True,
        help="if the output holds another model's rows, move them under _versions/ and relabel",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: RAY_ADDRESS, else embedded local Ray)",
    )


def config_reference() -> str:
    lines = [
        "configuration keys (YAML sections, or --set section.key=value; sizes and durations "
        "take units: 4GiB, 500MB, 6h, 5m, 300s):"
    ]
    for key, (item, kind) in all_keys().items():
        rule = rule_of(item)
        default = show(item.default, rule.unit)
        lines.append(f"  {key}  ({describe(kind, rule)}; default {default})")
        lines += textwrap.wrap(rule.help, 94, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n\n" + EPILOG


def config_from(args: argparse.Namespace) -> JobConfig:
    return load_config(
        args.config,
        args.set,
        manifest_uri=args.manifest,
        output_uri=args.output,
        model_source=args.model,
        run_mode=args.mode,
        refresh_changed=args.refresh_changed,
        new_version=args.new_version,
    )


def run_command(args: argparse.Namespace) -> int:
    from vivit_batch import job
    from vivit_batch.report import run_summary

    config = config_from(args)
    job.connect(args.address)
    report = job.run_job(job.prepare_job(config))
    print(run_summary(report))
    return exit_code_of(report)


def exit_code_of(report: RunReport) -> int:
    """EXIT_OK, or EXIT_ERROR_BUDGET (saying why) when the error budget is exceeded."""
    budget = report.error_budget
    if not budget.exceeded:
        return EXIT_OK
    print(
        f"error: {budget.error_fraction:.1%} of the manifest's videos have error rows "
        f"({budget.errors_this_run} from this run, {budget.errors_kept} kept from earlier "
        f"runs), above run.max_error_fraction={budget.max_error_fraction}. Fix the videos "
        "and rerun with --rerun-errors, or raise run.max_error_fraction",
        file=sys.stderr,
    )
    return EXIT_ERROR_BUDGET


def validate_command(args: argparse.Namespace) -> int:
    from vivit_batch import job
    from vivit_batch.device import summary
    from vivit_batch.stages import DecodeStage

    config = config_from(args)
    job.connect(args.address)
    prepared = job.prepare_job(config)
    print(
        f"config ok; model {config.model.source} ({prepared.model_config.num_labels} labels, "
        f"weights sha256 {prepared.checkpoint.weights_sha256[:12]}); manifest "
        f"{prepared.manifest.rows} rows"
    )
    resources = job.plan_resources(config, job.cluster_shape())
    print(f"plan: {resources.describe()}")
    decoded = DecodeStage(prepared.decode)(job.first_rows(prepared, args.videos))
    labelled = job.label_on_cluster(prepared, resources, decoded)
    [device] = [json.loads(d) for d in labelled.column(INFERENCE_DEVICE).unique().to_pylist()]
    print(f"inference actor: {summary(device)}")
    if "warning" in device:
        print(f"warning: {device['warning']}")
    for row in labelled.select(["uri", "status", "error_message", "label", "score"]).to_pylist():
        if row["status"] == "ok":
            print(f"  ok    {row['uri']}: {row['label']} ({row['score']:.2f})")
        else:
            print(f"  error {row['uri']}: {row['error_message']}")
    return EXIT_OK


def report_command(args: argparse.Namespace) -> int:
    from vivit_batch.report import summarise_output

    print(summarise_output(args.output))
    return EXIT_OK


def demo_command(args: argparse.Namespace) -> int:
    from vivit_batch.demo.run import run_demo

    return exit_code_of(run_demo(args.dir, args.videos, args.seed))


if __name__ == "__main__":
    sys.exit(main())
