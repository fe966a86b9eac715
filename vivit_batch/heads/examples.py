"""The training examples in an output: the `ok` rows that have a truth value, read file by file
(only the columns needed, only the rows kept), in a fixed order so that the same output always
gives the same examples. The truth values come from a manifest column carried into the output,
or from a file of video ids and values (`--labels`: labels given after the rows were written)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.config import ConfigError, ManifestSection
from vivit_batch.manifest.read import batches, manifest_format
from vivit_batch.output import Output
from vivit_batch.output.reading import check_truth_column

MANIFEST_COLUMN_FIX = (
    ". Put the true labels in a manifest column (e.g. `label` with manifest.column_prefix="
    "manifest_, read as manifest_label) and label the manifest, or give them in a file with "
    "--labels"
)
ORDER = ("video_id", "segment_index")
"""Rows are sorted by these (those the output has): a segment output's rows of a video in time
order."""


@dataclass
class Examples:
    embeddings: np.ndarray
    """(rows, hidden) float32: each row's stored embedding"""
    truth: np.ndarray
    """(rows,) the truth value of each row, as text"""
    videos: np.ndarray
    """(rows,) int: which video each row is of (0, 1, ... in video_id order); a segment output
    has several rows per video"""
    weights_sha256: list[str]
    """the distinct `model_sha256` of the rows: the weights that computed the embeddings"""

    @property
    def rows(self) -> int:
        return len(self.truth)


def read_examples(output: Output, truth_column: str, labels: pa.Table | None = None) -> Examples:
    """The `ok` rows with a truth value (null and "" are no value), sorted by `ORDER`: from the
    output's manifest column `truth_column`, or by video from `labels` (`read_labels_file`).
    `ConfigError` when the output has no such manifest column."""
    columns = output.columns()
    if not columns:
        raise ConfigError(f"{output.uri} has no rows yet: label videos into it first")
    if labels is None:
        check_truth_column(columns, truth_column, MANIFEST_COLUMN_FIX)
    order = [name for name in ORDER if name in columns]
    needed = [*order, "status", "embedding", "model_sha256"]
    kept = []
    for _, table in output.each_file(needed + ([truth_column] if labels is None else [])):
        if labels is None:
            truth = pc.cast(table[truth_column], pa.string())
        else:
            truth = labels["truth"].take(pc.index_in(table["video_id"], labels["video_id"]))
        # a null truth compares as null, which `filter` drops like the empty ones
        keep = pc.and_(pc.equal(table["status"], "ok"), pc.not_equal(truth, ""))
        kept.append(table.select(needed).append_column("truth", truth).filter(keep))
    rows = pa.concat_tables(kept).sort_by([(n, "ascending") for n in order])
    return Examples(
        embeddings=embedding_matrix(rows["embedding"]),
        truth=np.asarray(rows["truth"].to_pylist(), dtype=object),
        videos=pc.rank(rows["video_id"], tiebreaker="dense").to_numpy() - 1,
        weights_sha256=sorted(pc.unique(rows["model_sha256"]).drop_null().to_pylist()),
    )


def read_labels_file(uri: str, column: str, options: dict | None = None) -> pa.Table:
    """(video_id, truth) of the rows of a CSV, JSONL or Parquet file (a manifest with ids, or
    review's file once filled) that have a value in `column`. `ConfigError` when it cannot be
    read, lacks a column, or gives a video two values."""
    fmt = manifest_format(ManifestSection(uri=uri), options)
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ConfigError(f"--labels {uri}: expected a .csv, .jsonl or .parquet file")
    try:
        table = pa.Table.from_batches([batch for _, batch in batches(uri, fmt, options)])
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"--labels {uri} cannot be read: {error}") from error
    missing = [name for name in ("video_id", column) if name not in table.column_names]
    if missing:
        raise ConfigError(
            f"--labels {uri} has no {' and no '.join(missing)} column; it has "
            f"{', '.join(table.column_names)}"
        )
    truth = pc.cast(table[column], pa.string())
    pairs = pa.table({"video_id": pc.cast(table["video_id"], pa.string()), "truth": truth})
    pairs = pairs.filter(pc.not_equal(truth, "")).group_by(["video_id", "truth"]).aggregate([])
    counted = pc.value_counts(pairs["video_id"])
    twice = counted.filter(pc.greater(counted.field("counts"), 1)).field("values")
    if len(twice):
        raise ConfigError(
            f"--labels {uri} gives more than one {column} to video_id "
            f"{', '.join(twice.to_pylist()[:5])}{' ...' if len(twice) > 5 else ''}: keep one"
        )
    return pairs


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(rows, hidden) float32 of a column of embeddings (fixed-size lists, none null)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    hidden = array.type.list_size
    values = array.values.to_numpy(zero_copy_only=False)
    start = array.offset * hidden
    return values[start : start + len(array) * hidden].reshape(len(array), hidden)
