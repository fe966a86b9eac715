"""A run: lock -> choose the work -> write (the output changed from the first commit on) ->
compact (`output.compact_after_files`) -> report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import ray

from vivit_batch.config import RunSection
from vivit_batch.errors import Interrupted, LockLost
from vivit_batch.interrupts import deferred, time_left
from vivit_batch.job.cluster import cluster_shape
from vivit_batch.job.committed_join import decided_work
from vivit_batch.job.pipeline import labelled_parts, partition_values, stage_errors, staged_files
from vivit_batch.job.prepare import (
    PreparedJob,
    check_identity,
    identity_differences,
    start_calibration,
)
from vivit_batch.job.resources import (
    Resources,
    gpus_per_inference_actor,
    plan_resources,
    plans_from_costs,
    require_decode_device,
)
from vivit_batch.job.shared_output import require_shared_output
from vivit_batch.logs import interactive, progress_lines
from vivit_batch.output import (
    ErrorBudget,
    Fence,
    FileWriter,
    ModelUsed,
    Output,
    RunReport,
    RunWriter,
    Throughput,
    Unlocked,
    WriteStats,
    new_run_id,
    output_schema,
)
from vivit_batch.redact import error_text, redact
from vivit_batch.work import Work

log = logging.getLogger("vivit_batch")


def run_job(job: PreparedJob) -> RunReport:
    """Label the manifest into the output: lock -> choose the work -> write -> report. The
    output is changed only once the first file is ready to commit (by then the stages have
    passed their device and checkpoint checks), or at the end. Raises `LockLost` if another
    run takes the output over meanwhile."""
    config = job.config
    run_id = config.run.run_id or new_run_id()
    output = Output(config.output.uri, job.decode.storage_options)
    started = time.time()
    configure_ray_data()
    with holding_lock(output, run_id, config.run) as lock:
        require_shared_output(output, run_id)
        output.finish_merges(lock)  # a compaction's merge left half done: before any reading
        work = choose_work(job, output)
        resources, calibration = planned_resources(
            job, min(work.to_label, config.run.videos_per_part)
        )
        log.info(
            "run %s: %d of the manifest's %d videos to label; %s",
            run_id,
            work.to_label,
            job.manifest.rows,
            resources.describe() if work.to_label else "no actor to start",
        )
        writer = RunWriter(
            output,
            lock,
            file_writer(job, output, run_id, started),
            job.identity,
            work.relabelled,
            work.archive,
        )
        plan = (resources, calibration)
        try:
            write_rows(job, labelled_parts(job, resources, run_id, work), writer, work.to_label)
        except Interrupted as stop:
            report = run_report(job, run_id, started, work, writer.stats, plan, lock)
            finish_stopped(report, stop, writer)
            raise
        except Exception as error:
            if writer.stats.files:  # a refusal comes before the first commit: it says enough
                report = run_report(job, run_id, started, work, writer.stats, plan, lock)
                finish_failed(report, error, writer)
            raise
        writer.compact(config.output)
        report = run_report(job, run_id, started, work, writer.stats, plan, lock)
        writer.finish(report)
    return report


def log_what_stands(run_id: str, ended_by: str, stats: WriteStats) -> None:
    """What a run that ends early leaves (its commits are whole, and all that changed): a line,
    and for JSON logs an `ended` object. `ended_by`: the signal's name, or "error"."""
    how = "failed" if ended_by == "error" else f"stopped by {ended_by}"
    log.info(
        "run %s: %s after committing %d videos' rows in %d files: those stand; every other "
        "video's rows are as they were before the run",
        run_id,
        how,
        stats.videos,
        len(stats.files),
        extra={
            "fields": {
                "ended": {
                    "by": ended_by,
                    "videos_committed": stats.videos,
                    "files_committed": len(stats.files),
                }
            }
        },
    )


def finish_stopped(report: RunReport, stop: Interrupted, writer: RunWriter) -> None:
    """Say what the run stopped by `stop` committed, and where it committed anything, write
    its report, marked `stopped_by` (a run stopped before its first commit changes nothing)."""
    log_what_stands(report.run_id, stop.by, writer.stats)
    if report.files:
        report.mark_stopped(stop.by, f"stopped by {stop.by} after {what_it_left(report)}")
        writer.finish(report)


def finish_failed(report: RunReport, error: Exception, writer: RunWriter) -> None:
    """Say what the run that `error` ended had committed, and write its report, marked
    `failed`, where the output still takes it (a full disk may not)."""
    log_what_stands(report.run_id, "error", writer.stats)
    report.mark_failed(error_text(error), f"failed after {what_it_left(report)}")
    try:
        writer.finish(report)
    except Exception as unwritten:
        log.warning("run %s: its report could not be written either: %s", report.run_id, unwritten)


def what_it_left(report: RunReport) -> str:
    left = report.manifest_rows - report.skipped_committed - report.videos_written
    return (
        f"committing {report.videos_written} videos' rows; the other {left} videos to label "
        "were not labelled"
    )


def configure_ray_data() -> None:
    """Before the run makes any dataset (each copies the driver's context when it is made, and
    those made from it share that copy): a stage's exception reaches the driver as itself (an
    inference actor's refusal must end the run with exit code 2), not as Ray Data's wrapper;
    progress bars only where a terminal shows them."""
    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    context.enable_progress_bars = interactive()


def planned_resources(job: PreparedJob, videos: int) -> tuple[Resources, dict]:
    """The actor pools for this cluster and `videos` to label in one execution (a part of the
    manifest: `pipeline.parts_to_label`), and what the stages' costs measured for a CPU plan
    (the run report's `calibration`: empty for a GPU or explicit plan, and when there is
    nothing to label)."""
    cluster = cluster_shape()
    resources = job.config.resources
    gpu_plan = bool(gpus_per_inference_actor(resources, cluster))
    require_decode_device(job.config.decode, cluster, gpu_plan)  # before measuring anything
    needs_costs = videos and plans_from_costs(resources)
    if not needs_costs or gpu_plan:
        if job.calibration:
            job.calibration.cancel()
        return plan_resources(job.config, cluster, videos=videos), {}
    start_calibration(job)
    calibration = job.calibration
    assert calibration is not None
    costs = calibration.costs()
    if costs is None:
        log.warning(
            "could not measure what decoding and inference cost per clip (%s): the CPUs are "
            "split evenly between them",
            calibration.failure,
        )
    else:
        log.info(
            "per clip on one core: decoding %s, inference %s (measured on %d of the manifest's "
            "first videos in %.1f s)",
            _seconds(costs.decode_s),
            _seconds(costs.inference_s),
            costs.videos,
            costs.seconds,
        )
    return plan_resources(job.config, cluster, costs, videos), calibration.record()


def _seconds(value: float | None) -> str:
    if value is None:
        return "unknown (no video decoded)"
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


@contextlib.contextmanager
def holding_lock(output: Output, run_id: str, run: RunSection) -> Iterator[Fence]:
    """The output's lock for the block; a lost lock interrupts the block (from the heartbeat
    thread) and ends it with `LockLost`."""
    if run.locking == "none":
        log.warning("run.locking=none: no lock; nothing stops another run writing %s", output.uri)
        yield Unlocked(run_id)
        return
    lock = output.lock(run_id, run.lock_stale_after_s, run.lock_wait_s, _interrupt_main_thread)
    try:
        with _interruptible(), lock:  # the lock (and its heartbeat) ends first
            yield lock
    except (KeyboardInterrupt, Exception):
        # Once the lock is lost, whatever ended the block is that loss: the heartbeat's
        # interrupt (in the block, or in the lock's release on the way out), or a commit whose
        # staged file the run that took over had cleared.
        if lock.lost:
            raise LockLost(lock.lost) from None
        raise


LOCK_LOST_SIGNAL = signal.SIGUSR1
"""Sent by the heartbeat thread to the main thread when the lock is lost. SIGINT would not do:
background jobs (cron, `cmd &`) start with it ignored, and `_thread.interrupt_main` does not
wake a thread blocked in a wait (Ray Data's, for a video that takes decode.timeout_s)."""


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """While the block runs in the main thread, `LOCK_LOST_SIGNAL` raises KeyboardInterrupt
    there (BaseException: no library's `except Exception` swallows it on the way up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(LOCK_LOST_SIGNAL, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(LOCK_LOST_SIGNAL, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _interrupt_main_thread(reason: str) -> None:
    """Stop the run's main thread at once when the heartbeat thread finds the lock lost (the
    commits would refuse anyway, but decoding and labelling would go on). A run outside the
    main thread is not interrupted: its next commit stops it."""
    main = threading.main_thread()
    if threading.current_thread() is main or main.ident is None:
        return  # the main thread itself found it: it raises LockLost
    if signal.getsignal(LOCK_LOST_SIGNAL) is _raise_interrupt:
        signal.pthread_kill(main.ident, LOCK_LOST_SIGNAL)


def identity_to_archive(job: PreparedJob, output: Output) -> dict | None:
    """The output's recorded identity if this run starts a new version over it (`--new-version`;
    without it a different identity is refused here, exit 2). Read under the lock: another run
    may have changed the identity since `prepare_job`."""
    recorded = output.read_identity()
    check_identity(job, recorded)
    if recorded is None or not identity_differences(recorded, job.identity):
        return None
    return recorded


def choose_work(job: PreparedJob, output: Output) -> Work:
    """Which committed videos the run skips, and where the rows of those it relabels are (they
    are replaced in place as it commits). Only reads the output."""
    archive = identity_to_archive(job, output)
    if archive is not None:  # its rows move aside: the whole manifest is labelled
        return Work.fresh(job.manifest.rows, archive)
    return decided_work(job, output)


def write_rows(
    job: PreparedJob, labelled: Iterator[ray.data.Dataset], writer: RunWriter, to_label: int
) -> None:
    """Stage the labelled rows of each part as files as they come in (`staged_files`: when the
    pipeline stops or fails, those held are staged first); `writer` commits each one (and, when
    no terminal shows Ray Data's progress bars, this logs how far it got every so often)."""
    committed, arrived = writer.stats, WriteStats()
    progress = (
        contextlib.nullcontext()
        if interactive()
        else progress_lines(
            to_label,
            lambda: (
                arrived.videos,
                committed.videos,
                arrived.clips,
                arrived.status.get("error", 0),
            ),
            job.config.run.progress_every_s,
            time_left,
        )
    )
    with stage_errors(), progress:
        segments = job.decode.sampling.segments
        for dataset in labelled:
            files = staged_files(dataset, writer.files, segments, job.config.output, arrived)
            with contextlib.closing(files):  # and so Ray Data's execution, a commit failing
                for staged in files:
                    with deferred():  # a signal's account of the commits is whole
                        writer.commit(staged)


def file_writer(job: PreparedJob, output: Output, run_id: str, started: float) -> FileWriter:
    """What stages this run's files."""
    segments = job.decode.sampling.segments
    return FileWriter(
        output,
        run_id,
        output_schema(job.model_config.hidden_size, job.partition_by, segments),
        job.config.output.rows_per_file,
        partition_values(job.partition_by, started),
    )


def run_report(
    job: PreparedJob,
    run_id: str,
    started: float,
    work: Work,
    stats: WriteStats,
    plan: tuple[Resources, dict],
    lock: Fence,
) -> RunReport:
    config = job.config
    resources, calibration = plan
    wall = time.time() - started
    devices = [json.loads(record) for record in stats.devices]
    return RunReport(
        run_id=run_id,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(),
        wall_seconds=round(wall, 3),
        mode=config.run.mode,
        model=ModelUsed(
            source=config.model.source,
            revision=config.model.revision,
            commit=job.checkpoint.commit,
            weights_sha256=job.checkpoint.weights_sha256,
            preprocessor_file=job.checkpoint.processor_file,
            preprocessing=job.decode.processor.to_dict(),
        ),
        manifest_rows=job.manifest.rows,
        rows_written=stats.rows,
        videos_written=stats.videos,
        skipped_committed=job.manifest.rows - work.to_label,
        rows_replaced=stats.rows_replaced,
        counts={"status": dict(stats.status), "error_code": dict(stats.error_codes)},
        error_budget=ErrorBudget(
            manifest_rows=job.manifest.rows,
            errors_this_run=stats.status.get("error", 0),
            errors_kept=work.errors_kept,
            max_error_fraction=config.run.max_error_fraction,
        ),
        throughput=Throughput.of(
            stats,
            wall,
            resources.decode_actors,
            resources.inference_actors,
            resources.gpu_decoders,
        ),
        inference_devices=devices,
        warnings=list(
            dict.fromkeys(job.warnings + [d["warning"] for d in devices if "warning" in d])
        ),
        sandbox=job.sandbox,
        lock_generation=lock.generation,
        resources=vars(resources),
        calibration=calibration,
        files=stats.files,
        config=json.loads(redact(json.dumps(config.to_dict()))),  # a presigned manifest URL
        versions=versions(),
    )


def versions() -> dict:
    import av
    import torch

    from vivit_batch import __version__

    return {
        "vivit_batch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "av": av.__version__,
        "host": platform.node(),
        "pid": os.getpid(),
    }
