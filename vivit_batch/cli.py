"""`vivit-batch run | validate | report | review | train-head | relabel | demo | lock | compact`.

Exit codes: 0 run completed (per-video errors within the error budget), 2 bad configuration or
manifest (nothing processed), 3 error budget exceeded, 124 stopped by its time limit, 1 anything
else; `lock`: 75 when a live run holds the output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NoReturn

from vivit_batch import __version__
from vivit_batch.config import JobConfig, all_keys, load_config
from vivit_batch.errors import (
    EXIT_ERROR_BUDGET,
    EXIT_FAILED,
    EXIT_LOCK_HELD,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    Interrupted,
    LockLost,
    UsageError,
    advice_for,
    from_environment,
)
from vivit_batch.interrupts import signals_interrupting, time_limited
from vivit_batch.logs import LOG_FORMATS, setup_logging
from vivit_batch.output import RunReport
from vivit_batch.output.schema import INFERENCE_DEVICE
from vivit_batch.redact import error_text, redact
from vivit_batch.review import FORMATS, POOL_FACTOR, TRUTH
from vivit_batch.settings import SECONDS, describe, rule_of, show
from vivit_batch.storage import job_storage_options

if TYPE_CHECKING:
    import pyarrow as pa

    from vivit_batch.stages.decode import DecodeStage

EPILOG = """\
examples:
  vivit-batch run --manifest videos.csv --output out/ --model google/vivit-b-16x2-kinetics400
  vivit-batch run --manifest 's3://bucket/raw/' --output s3://bucket/labels/ \\
      --model ./checkpoint --config configs/kinetics400-4x3.yaml --set resources.batch_size=4
  vivit-batch report out/ --html report.html --truth-column manifest_label
  vivit-batch review out/ --count 50 --save to-label.csv
  vivit-batch train-head out/ --labels to-label.csv --truth-column truth --save my-head/
  vivit-batch relabel out/ --model my-head/
  vivit-batch lock s3://bucket/labels/ || echo "a run holds it"
  vivit-batch compact out/ --dry-run

manifest: CSV/JSONL/Parquet with a `uri` column (optional `video_id`; other columns pass
through), a text file of URIs, or a directory/glob/prefix of videos.
exit codes: 0 done, 2 bad config or manifest, 3 too many per-video errors, 1 other failure,
130 / 143 / 129 stopped by SIGINT / SIGTERM / SIGHUP, 124 stopped by run.time_limit_s; `lock`:
75 when a live run holds the output.
"""


log = logging.getLogger("vivit_batch")


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()  # for the argument errors
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    try:
        with signals_interrupting():
            return args.handler(args)
    except UsageError as error:
        log_error(redact(str(error)))  # it may quote manifest lines
        return EXIT_USAGE
    except LockLost as error:
        log_error(str(error))
        return EXIT_FAILED
    except Interrupted as stop:
        log_error(f"{args.command}: stopped by {stop.by}")
        return stop.exit_code
    except Exception as error:
        log_failure(args.command, error, args.verbose or args.log_format == "json")
        return EXIT_FAILED


def log_error(message: str) -> None:
    for line in message.splitlines():
        log.error(line)


def log_failure(command: str, error: Exception, with_traceback: bool) -> None:
    """One line for a failure of the machine, a store or the cluster (its traceback too where
    `with_traceback`: -v, and JSON logs, where it is a field); for any other, the line says it
    is a bug and the traceback follows."""
    what = error_text(error)
    fields = {"error": {"type": type(error).__name__, "message": what}}
    if not from_environment(error):
        log.error(
            f"{command}: failed on a bug in vivit-batch ({what}): please report it with the "
            "traceback below",
            exc_info=error,
            extra={"fields": fields},
        )
        return
    advice = advice_for(error)
    log.error(
        f"{command}: failed: {what}. "
        + (f"{advice.capitalize()}, then run" if advice else "Once that is fixed, run")
        + " the same command again",
        exc_info=error if with_traceback else None,
        extra={"fields": fields},
    )


class OneLineErrors(argparse.ArgumentParser):
    """Argument errors as one logged line (not usage + error), exit code 2."""

    def error(self, message: str) -> NoReturn:
        log_error(f"{self.prog}: {message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="vivit-batch",
        description="Label video datasets with ViViT on Ray: one Parquet row per video.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"vivit-batch {__version__}")
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
    report = commands.add_parser("report", help="summarise an output dataset (text, JSON, HTML)")
    report.add_argument("output", help="the --output of earlier runs")
    report.add_argument(
        "--truth-column",
        metavar="NAME",
        help="a column of true labels (from the manifest): adds top-1/top-5 accuracy and, in "
        "the HTML page, a confusion matrix",
    )
    report.add_argument("--json", action="store_true", help="print a JSON object, not text")
    report.add_argument(
        "--html", metavar="PATH", help="also write a self-contained HTML page with charts"
    )
    report.add_argument(
        "--thumbnails",
        type=count_of(minimum=0),
        default=3,
        metavar="N",
        help="on the HTML page, for each of the 10 most frequent labels, N thumbnails of its "
        "highest- and N of its lowest-scoring videos (a frame from the middle of the clip or "
        "segment, decoded from the sources now); 0: none (default: %(default)s)",
    )
    add_config_arguments(report, "its storage and decode sections apply to the thumbnails")
    report.set_defaults(handler=report_command)
    add_review_command(commands)
    demo = commands.add_parser("demo", help="generate sample videos and label them offline")
    demo.add_argument("--dir", default="demo-output", help="where samples and output go")
    demo.add_argument(
        "--videos",
        type=int,
        default=28,
        help="sample videos (4 of each of its 7 motions by default; the closed loop to your "
        "own classes needs 28)",
    )
    demo.add_argument("--seed", type=int, default=2024)
    demo.set_defaults(handler=demo_command)
    add_lock_command(commands)
    add_compact_command(commands)
    add_head_commands(commands)
    for command in commands.choices.values():
        add_logging_arguments(command)
    return parser


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: a time and level on each line; json: one JSON object per line",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Ray's and the storage libraries' INFO lines",
    )


def add_lock_command(commands) -> None:
    lock = commands.add_parser(
        "lock",
        help="say whether a run could take an output's lock now (read-only)",
        description="Print the output's lock state in one line. Exit 0 when a run could start "
        f"now (free, released or stale), {EXIT_LOCK_HELD} when a live run holds it, 2 when the "
        "output cannot be read. A held lock is watched until it is renewed (up to a quarter of "
        "its stale period) or goes stale (its whole stale period), as a starting run would.",
    )
    lock.add_argument("output", help="the --output of the runs")
    add_config_arguments(lock, "its storage and run sections apply")
    lock.set_defaults(handler=lock_command)


def add_compact_command(commands) -> None:
    compact = commands.add_parser(
        "compact",
        help="merge an output's small files and drop its empty ones, under its lock",
        description="In each data folder (each run_date= partition, or the root), merge the "
        "files below --rows-per-file rows, in path order, into files of at most that many, and "
        "drop the files with no rows, under the output's lock (taken, waited for and fenced as "
        "a run's). On local disk each partition folder is rebuilt beside the output and swapped "
        "in atomically: readers see every video exactly once throughout. On S3, and for the "
        "files at the root of an unpartitioned output, merges are made file by file, which "
        "needs --offline. Exit 2 when another run holds the lock.",
    )
    compact.add_argument("output", help="the --output of the runs")
    compact.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would merge into what, per folder, and change nothing (no lock taken)",
    )
    compact.add_argument(
        "--offline",
        action="store_true",
        help="also merge where no folder can be swapped atomically (S3, an unpartitioned "
        "output), file by file: a reader meanwhile could see a merge's rows twice. Only when "
        "nothing reads the output while it runs",
    )
    compact.add_argument(
        "--rows-per-file",
        type=count_of(minimum=1),
        metavar="N",
        help="most rows in a merged file; files with fewer are small (default: "
        "output.rows_per_file)",
    )
    add_config_arguments(compact, "its output, storage and run sections apply")
    compact.set_defaults(handler=compact_command)


REVIEW_RULE = f"""\
Pick the N videos a person should label next and write them to FILE.

candidates: `ok` rows with no value (null or empty) in --truth-column, the output's or the
  --labels files' (by video_id), one per video (in a segments output, its least certain
  segment); a video with a truth value is never picked.
rule: the margin (top-1 minus top-2 score) says how certain a row is. Of the {POOL_FACTOR} x N least
  certain candidates (ties by video id), greedy k-center on their normalised embeddings, seeded
  with the least certain, picks N: each next one is the farthest (cosine) from every one picked
  so far, so near-duplicates are not all picked. FILE lists them least certain first.
FILE: by its extension, .csv or .jsonl with uri, video_id, predicted_label, predicted_score,
  margin and an empty truth column (--truth-column, else `truth`) to fill in, then pass with
  --labels FILE to train-head and to the next review; or --format label-studio: Label Studio's
  task import JSON, the predicted label as a pre-annotation (from_name "label", to_name "video":
  see the README's labeling config).
"""


def add_review_command(commands) -> None:
    review = commands.add_parser(
        "review",
        help="pick the videos a person should label next (uncertain, spread out)",
        description=REVIEW_RULE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    review.add_argument("output", help="the --output of earlier runs")
    review.add_argument("--count", type=count_of(minimum=1), required=True, metavar="N")
    review.add_argument(
        "--save",
        required=True,
        metavar="FILE",
        help="where to write them: .csv or .jsonl (the format follows), any name with --format",
    )
    review.add_argument(
        "--truth-column",
        metavar="COL",
        help="the column of true labels, in the output (a manifest column) or in the --labels "
        "files: videos with a value in it are not picked; also FILE's column to fill in "
        "(default: truth)",
    )
    add_labels_argument(review, "a video with a value in one is not picked")
    review.add_argument(
        "--format", choices=FORMATS, help="default: FILE's extension (.csv, .jsonl)"
    )
    add_config_arguments(review, "its storage section applies")
    review.set_defaults(handler=review_command)


def add_labels_argument(parser: argparse.ArgumentParser, effect: str = "") -> None:
    parser.add_argument(
        "--labels",
        action="append",
        metavar="FILE",
        help="labels given after the rows were written: a CSV, JSONL or Parquet file with "
        "video_id and the truth column (review's file once filled in, or a manifest with ids); "
        "repeat it for several files. A video's value in a file wins over the output's column"
        + (f"; {effect}" if effect else ""),
    )


def add_config_arguments(parser: argparse.ArgumentParser, applies: str) -> None:
    """--config and --set, for commands that read an output."""
    parser.add_argument("--config", help=f"YAML config file: {applies}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="as for `run`"
    )


def count_of(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def add_head_commands(commands) -> None:
    train = commands.add_parser(
        "train-head",
        help="fit a classifier of your own classes on an output's embeddings",
        description="Fit a linear softmax classifier on the stored embeddings of the ok rows "
        "that have a value in --truth-column, evaluate it on held-out videos, fit it on all of "
        "them, and save it with the backbone as a checkpoint (Hugging Face layout) of the new "
        "classes: `vivit-batch run --model DIR` labels new videos with them, `vivit-batch "
        "relabel OUTPUT --model DIR` relabels the output from its embeddings.",
    )
    train.add_argument("output", help="the --output of earlier runs")
    train.add_argument(
        "--truth-column",
        required=True,
        metavar="NAME",
        help="the column with the true class of some videos, in the output (a manifest "
        "column) or in the --labels files (empty: no label)",
    )
    train.add_argument("--save", required=True, metavar="DIR", help="where the checkpoint goes")
    add_labels_argument(train)
    train.add_argument(
        "--model",
        metavar="SOURCE",
        help="the backbone that computed the embeddings (default: the output's model)",
    )
    add_config_arguments(train, "its storage section applies")
    train.set_defaults(handler=train_head_command)
    relabel = commands.add_parser(
        "relabel",
        help="recompute an output's labels with a head from train-head",
        description="Recompute label, score and top-k of every ok row from its stored embedding "
        "with the head in --model, and commit them as the output's new version under its lock "
        "(the previous one is kept under _versions/; readers see one row per video throughout).",
    )
    relabel.add_argument("output", help="the --output of earlier runs")
    relabel.add_argument("--model", required=True, metavar="DIR", help="a train-head checkpoint")
    add_config_arguments(relabel, "its storage and run sections apply")
    relabel.set_defaults(handler=relabel_command)


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
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--rerun-errors",
        action="store_const",
        const="rerun_errors",
        dest="mode",
        help="also relabel videos whose committed rows are errors",
    )
    modes.add_argument(
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
    if args.mode == "force" and args.refresh_changed:
        raise ConfigError(
            "--force and --refresh-changed together: --force already relabels every video; "
            "pass one of them"
        )
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
    with within_time_limit(config, "the run"):
        prepared = job.prepare_job(config)  # every check that needs no cluster
        job.start_calibration(prepared)  # measured while Ray starts
        job.connect(args.address, args.verbose)
        report = job.run_job(prepared)
    for line in run_summary(report).splitlines():
        if line.strip():
            log.info(line.strip())
    return exit_code_of(report)


@contextlib.contextmanager
def within_time_limit(config: JobConfig, what: str) -> Iterator[None]:
    """The block stopped by `run.time_limit_s` (`TimeLimitReached`), which it says as it starts;
    `what` the block does, for that line."""
    seconds = config.run.time_limit_s
    with time_limited(seconds):
        if seconds is not None:
            ends = datetime.now(timezone.utc) + timedelta(seconds=seconds)
            log.info(
                f"run.time_limit_s={show(seconds, SECONDS)}: {what} stops at "
                f"{ends:%Y-%m-%d %H:%M:%S} UTC unless done before"
            )
        yield


def exit_code_of(report: RunReport) -> int:
    """EXIT_OK, or EXIT_ERROR_BUDGET (saying why) when the error budget is exceeded."""
    budget = report.error_budget
    if not budget.exceeded:
        return EXIT_OK
    log.error(
        f"{budget.error_fraction:.1%} of the manifest's videos have error rows "
        f"({budget.errors_this_run} from this run, {budget.errors_kept} kept from earlier "
        f"runs), above run.max_error_fraction={budget.max_error_fraction}. Fix the videos "
        "and rerun with --rerun-errors, or raise run.max_error_fraction"
    )
    return EXIT_ERROR_BUDGET


def validate_command(args: argparse.Namespace) -> int:
    from vivit_batch import job
    from vivit_batch.device_record import summary
    from vivit_batch.stages.decode import DecodeStage

    config = config_from(args)
    prepared = job.prepare_job(config)
    job.start_calibration(prepared)
    job.connect(args.address, args.verbose)
    log.info(
        f"config ok; model {config.model.source} ({prepared.model_config.num_labels} labels, "
        f"weights sha256 {prepared.checkpoint.weights_sha256[:12]}); manifest "
        f"{prepared.manifest.rows} rows"
    )
    resources, _ = job.planned_resources(prepared, prepared.manifest.rows)
    log.info(f"plan: {resources.describe()}; decode sandbox: {prepared.sandbox}")
    decoded = first_chunks(DecodeStage(prepared.decode), job.first_rows(prepared, args.videos))
    labelled = job.label_on_cluster(prepared, resources, decoded)
    [device] = [json.loads(d) for d in labelled.column(INFERENCE_DEVICE).unique().to_pylist()]
    log.info(f"inference actor: {summary(device)}")
    if "warning" in device:  # prepare_job has logged its own warnings
        log.warning(device["warning"])
    for row in labelled.to_pylist():
        if row["status"] == "ok":
            log.info(f"ok    {row['uri']}{segment_of(row)}: {row['label']} ({row['score']:.2f})")
        else:
            log.info(f"error {row['uri']}: {row['error_message']}")
    return EXIT_OK


def first_chunks(stage: DecodeStage, rows: pa.Table) -> pa.Table:
    """Each row's first decoded table: a video's rows, in segments mode only its first chunk of
    segments (a look, not a whole long video)."""
    import pyarrow as pa

    return pa.concat_tables(next(stage(rows.slice(i, 1))) for i in range(rows.num_rows))


def segment_of(row: dict) -> str:
    """Which segment a row labels, in segments mode."""
    if row.get("segment_index") is None:
        return ""
    return f" [{row['segment_start_s']:.1f}-{row['segment_end_s']:.1f} s]"


def report_command(args: argparse.Namespace) -> int:
    from vivit_batch.report import output_stats, summary_text

    config = load_config(args.config, args.set, output_uri=args.output)
    options = job_storage_options(config)
    examples = args.thumbnails if args.html else 0
    stats = output_stats(args.output, args.truth_column, examples, options)
    if args.html:
        from vivit_batch.report.html import write_html

        thumbnails = None
        if stats.examples:
            from vivit_batch.report.thumbnails import make_thumbnails

            shown = [e for label in stats.examples for e in label.highest + label.lowest]
            thumbnails = make_thumbnails(shown, config.decode, options)
        write_html(stats, args.html, thumbnails)
        log.info(f"wrote {args.html}")  # to stderr: stdout stays the report (JSON with --json)
    print(json.dumps(stats.to_dict(), indent=2) if args.json else summary_text(stats))
    return EXIT_OK


def review_command(args: argparse.Namespace) -> int:
    from vivit_batch.output import Output, unfinished_relabel
    from vivit_batch.review import pick_for_review, review_format, write_review
    from vivit_batch.truth import read_truth

    format = review_format(args.save, args.format)  # a wrong name costs no reading
    config = load_config(args.config, args.set, output_uri=args.output)
    output = Output.existing(args.output, job_storage_options(config))
    unfinished = unfinished_relabel(output.read_identity(), args.output)
    if unfinished:
        log.warning(f"{unfinished}. Until then the scores compared are of two taxonomies")
    column = args.truth_column or TRUTH
    truth = read_truth(output, column, args.labels) if args.truth_column or args.labels else None
    picked = pick_for_review(output, args.count, truth)
    write_review(picked, args.save, format, column)
    log.info(f"wrote {picked.num_rows} videos to label, least certain first, to {args.save}")
    if picked.num_rows < args.count:
        log.warning(f"only {picked.num_rows} videos without a truth value are labelled ok")
    return EXIT_OK


def demo_command(args: argparse.Namespace) -> int:
    from vivit_batch.demo.run import run_demo

    return exit_code_of(run_demo(args.dir, args.videos, args.seed))


def lock_command(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError

    from vivit_batch.output import Output, lock_state

    config = load_config(args.config, args.set, output_uri=args.output)
    if config.run.locking == "none":
        print("no lock: run.locking=none (nothing stops overlapping runs)")
        return EXIT_OK
    try:
        output = Output(args.output, job_storage_options(config))
        lock = output.lock("lock-probe", config.run.lock_stale_after_s, read_only=True)
        state = lock_state(lock)
    except (OSError, ValueError, BotoCoreError) as error:  # a bad URI, an unreachable store
        raise ConfigError(
            f"output {args.output}: cannot read its lock ({error}). Check the URI, the "
            "credentials and storage.endpoint_url"
        ) from error
    print(state.description)
    return EXIT_OK if state.free else EXIT_LOCK_HELD


def compact_command(args: argparse.Namespace) -> int:
    from vivit_batch.output import compact_output, compaction_summary

    config = load_config(args.config, args.set, output_uri=args.output)
    with within_time_limit(config, "the compaction"):
        planned = compact_output(
            args.output, config, args.rows_per_file, dry_run=args.dry_run, offline=args.offline
        )
    print(compaction_summary(planned, args.dry_run))
    return EXIT_OK


def train_head_command(args: argparse.Namespace) -> int:
    from vivit_batch.heads.train import train_head, training_summary

    config = load_config(args.config, args.set, output_uri=args.output)
    training = train_head(
        args.output,
        args.truth_column,
        args.save,
        args.model,
        job_storage_options(config),
        args.labels,
    )
    print(training_summary(training, args.save))
    return EXIT_OK


def relabel_command(args: argparse.Namespace) -> int:
    from vivit_batch.heads.relabel import relabel, relabel_summary

    config = load_config(args.config, args.set)
    with within_time_limit(config, "the relabel"):
        report = relabel(args.output, args.model, config)
    print(relabel_summary(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
