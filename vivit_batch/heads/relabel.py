"""`vivit-batch relabel OUTPUT --model DIR`: the prediction columns of every `ok` row recomputed
from its stored embedding with DIR's classifier, committed as the output's new version.

Under the output's lock: the rows' embeddings must come from the head's backbone; the current
identity is copied to `_versions/<name>/`, and the identity records the relabel under way
(`RELABELLING`: until it is taken out, `run` and `compact` refuse the output, whose files hold
two taxonomies); then, file by file (memory bounded by one file), each data file is copied there
(`.archived`) and replaced under its own name by the relabelled one, so readers see exactly one
row per video throughout; last, `_dataset.json` names DIR, so that `run --model DIR` adds to
this output, and a run report (mode "relabel") goes to `_runs/`. A relabel that stopped midway
is finished by the next one, with any head of the same backbone.

Only `label`, `label_id`, `score` and `topk_*` change: error rows and every other column (the
embedding, `model`/`model_sha256`, which keep naming the weights that computed it, `run_id`, the
manifest's columns) are carried over as they were. Each row keeps its number of top-k labels,
at most the head's number of classes.
"""

from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vivit_batch.config import JobConfig
from vivit_batch.errors import ConfigError, Interrupted
from vivit_batch.heads.checkpoint import HeadCheckpoint, read_head
from vivit_batch.heads.examples import embedding_matrix
from vivit_batch.interrupts import deferred
from vivit_batch.output import (
    RELABEL_MODE,
    RELABELLING,
    Fence,
    ModelUsed,
    Output,
    OutputLock,
    RunReport,
    Unlocked,
    WriteStats,
    new_run_id,
    parquet_bytes,
)
from vivit_batch.storage import job_storage_options

log = logging.getLogger("vivit_batch")


def relabel(output_uri: str, head_directory: str | Path, config: JobConfig) -> RunReport:
    """Relabel the output with the head (`config`: its storage and run sections apply); returns
    the run report. `ConfigError` (exit code 2), nothing changed, when DIR is not a head made
    by train-head or its backbone did not compute the output's embeddings."""
    head = read_head(head_directory)
    output = Output.existing(output_uri, job_storage_options(config))
    run = config.run
    run_id = run.run_id or new_run_id()
    started = time.time()
    lock: OutputLock | Unlocked = (
        Unlocked(run_id)
        if run.locking == "none"
        else output.lock(run_id, run.lock_stale_after_s, run.lock_wait_s)
    )
    with lock:
        output.clear_dead_staging(lock)
        identity = identity_before(output)
        require_backbone(output, head)
        archive = output.keep_identity(identity, lock)
        kept = output.uri_of(archive)
        head_source = str(head.directory.resolve())  # for train-head and relabel from any cwd
        underway = {"model": head_source, "run_id": run_id}
        output.write_identity({**identity, RELABELLING: underway}, lock)
        files = output.data_files()
        stats = WriteStats()
        try:
            for path in files:
                with deferred():  # a stop lands between files: `stats` counts what was replaced
                    stats.add(relabel_file(output, path, head, archive, lock))
        except Interrupted as stop:
            report = relabel_report(run_id, started, head, identity, stats, lock, kept)
            write_stopped(output, report, stop, len(files), lock)
            raise
        output.write_identity(
            {**identity, "model_source": head_source, "weights_sha256": head.weights_sha256},
            lock,
        )
        report = relabel_report(run_id, started, head, identity, stats, lock, kept)
        output.write_report(report, lock)
        output.clear_staging(run_id)
    return report


def identity_before(output: Output) -> dict:
    """The output's identity before this relabel: where a relabel stopped midway (its record
    in the identity), the one before that relabel, which this one finishes."""
    identity = output.read_identity() or {}
    stopped = identity.pop(RELABELLING, None)
    if stopped:
        log.info("finishing the relabel with %s (run %s)", stopped["model"], stopped["run_id"])
    return identity


def write_stopped(
    output: Output, report: RunReport, stop: Interrupted, files: int, lock: Fence
) -> None:
    """Say what a relabel stopped by `stop` left, and write its report, marked `stopped_by`."""
    said = (
        f"stopped by {stop.by} after relabelling {len(report.files)} of {files} files: "
        "the others keep the labels before it; run relabel with this head again to finish it "
        "(until then `run` and `compact` refuse this output)"
    )
    log.warning("relabel %s: %s", report.run_id, said)
    report.mark_stopped(stop.by, said)
    output.write_report(report, lock)
    output.clear_staging(report.run_id)


def require_backbone(output: Output, head: HeadCheckpoint) -> None:
    """`ConfigError` unless every ok row's embedding was computed by weights the head reads."""
    computed_by: set[str] = set()
    for _, table in output.each_file(["status", "model_sha256"]):
        ok = table.filter(pc.equal(table["status"], "ok"))
        computed_by.update(pc.unique(ok["model_sha256"]).drop_null().to_pylist())
    foreign = sorted(computed_by - head.reads)
    if foreign:
        raise ConfigError(
            f"--model {head.directory}: its backbone did not compute this output's embeddings "
            f"(rows of weights sha256 {', '.join(sha[:12] for sha in foreign)}; the head reads "
            f"those of {', '.join(sorted(sha[:12] for sha in head.reads))}). Train a head on "
            "this output with `vivit-batch train-head`, or relabel an output labelled with the "
            "head's base model"
        )


def relabel_file(
    output: Output, path: str, head: HeadCheckpoint, archive: str, lock: Fence
) -> WriteStats:
    table = pq.read_table(path, filesystem=output.filesystem)
    relabelled = with_predictions(table, head)
    output.replace_keeping(path, parquet_bytes(relabelled), archive, lock)
    return WriteStats(
        rows=table.num_rows,
        videos=pc.count_distinct(table["video_id"]).as_py(),
        files=[output.uri_of(path)],
        status=Counter(table["status"].to_pylist()),
    )


def with_predictions(table: pa.Table, head: HeadCheckpoint) -> pa.Table:
    """`table` with the prediction columns of its ok rows recomputed by `head`, in place (same
    positions and types); other rows and columns as they were."""
    ok = pc.and_(pc.equal(table["status"], "ok"), pc.is_valid(table["embedding"]))
    kept_k = pc.list_value_length(table["topk_ids"]).fill_null(0).to_numpy(zero_copy_only=False)
    counts = np.where(ok.to_numpy(zero_copy_only=False), np.minimum(kept_k, len(head.labels)), 0)
    probabilities = softmax(embedding_matrix(table["embedding"]) @ head.weight.T + head.bias)
    new = prediction_columns(probabilities, counts, head.labels)
    for name, column in new.items():
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        chosen = pc.if_else(ok, column.cast(field.type), table[name])
        table = table.set_column(index, field, chosen)
    return table


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def prediction_columns(
    probabilities: np.ndarray, counts: np.ndarray, labels: list[str]
) -> dict[str, pa.Array]:
    """Each row's top `counts[row]` classes (best first) as the output's prediction columns;
    a row with a count of 0 gets empty lists."""
    width = int(counts.max(initial=1))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :width]
    top_scores = np.take_along_axis(probabilities, order, axis=1)
    taken = np.arange(width) < counts[:, None]  # row-major: each row's best first
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    names = pa.array(labels, pa.string())
    ids = pa.array(order[taken], pa.int32())
    best = pa.array(order[:, 0], pa.int32())
    return {
        "label": names.take(best),
        "label_id": best,
        "score": pa.array(top_scores[:, 0], pa.float32()),
        "topk_labels": pa.ListArray.from_arrays(offsets, names.take(ids)),
        "topk_ids": pa.ListArray.from_arrays(offsets, ids),
        "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(top_scores[taken], pa.float32())),
    }


def relabel_report(
    run_id: str,
    started: float,
    head: HeadCheckpoint,
    identity: dict,
    stats: WriteStats,
    lock: Fence,
    archive: str,
) -> RunReport:
    """`archive`: the URI of the folder the previous version is kept in."""
    return RunReport(
        run_id=run_id,
        started_at=datetime.fromtimestamp(started, timezone.utc).isoformat(),
        wall_seconds=round(time.time() - started, 3),
        mode=RELABEL_MODE,
        model=ModelUsed(
            source=str(head.directory),
            weights_sha256=head.weights_sha256,
            preprocessing=identity.get("preprocessing", {}),
        ),
        rows_written=stats.rows,
        videos_written=stats.videos,
        counts={"status": dict(stats.status)},
        lock_generation=lock.generation,
        files=stats.files,
        config={"relabel": {"model": str(head.directory), "previous_version": archive}},
        versions=versions(),
    )


def versions() -> dict:
    from vivit_batch import __version__

    return {
        "vivit_batch": __version__,
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "host": platform.node(),
    }


def relabel_summary(report: RunReport) -> str:
    """What `relabel` prints."""
    ok = report.counts["status"].get("ok", 0)
    return (
        f"relabelled {ok} rows with {report.model.source} in {report.wall_seconds:.2f} s "
        f"({report.rows_written - ok} error rows carried over; {len(report.files)} files)\n"
        f"previous version: {report.config['relabel']['previous_version']}; run report: "
        f"_runs/{report.run_id}.json"
    )
