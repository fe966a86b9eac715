"""The training examples in an output: the `ok` rows that have a truth value (`truth.Truth`:
the output's manifest column, or labels files given later), read file by file (only the columns
needed, only the rows kept), in a fixed order so that the same output always gives the same
examples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.errors import ConfigError
from vivit_batch.output import Output
from vivit_batch.truth import Truth, has_value, read_truth

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
    truth_from: Truth
    """where the truth values came from (the output's column, labels files)"""

    @property
    def rows(self) -> int:
        return len(self.truth)


def read_examples(output: Output, column: str, labels: list[str] | None = None) -> Examples:
    """The `ok` rows with a value in `column`, sorted by `ORDER`: the output's manifest column,
    and the labels files' (`labels`, by video_id). `ConfigError` when there are none to read
    (`truth.read_truth`)."""
    columns = output.columns()
    if not columns:
        raise ConfigError(f"{output.uri} has no rows yet: label videos into it first")
    truth = read_truth(output, column, labels, MANIFEST_COLUMN_FIX)
    order = [name for name in ORDER if name in columns]
    needed = [*order, "status", "embedding", "model_sha256"]
    kept = []
    for _, table in output.each_file(list(dict.fromkeys(needed + truth.output_columns))):
        values = truth.values(table)
        keep = pc.and_(pc.equal(table["status"], "ok"), has_value(values))
        kept.append(table.select(needed).append_column("truth", values).filter(keep))
    rows = pa.concat_tables(kept).sort_by([(n, "ascending") for n in order])
    return Examples(
        embeddings=embedding_matrix(rows["embedding"]),
        truth=np.asarray(rows["truth"].to_pylist(), dtype=object),
        videos=pc.rank(rows["video_id"], tiebreaker="dense").to_numpy() - 1,
        weights_sha256=sorted(pc.unique(rows["model_sha256"]).drop_null().to_pylist()),
        truth_from=truth,
    )


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(rows, hidden) float32 of a column of embeddings (fixed-size lists, none null)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    hidden = array.type.list_size
    values = array.values.to_numpy(zero_copy_only=False)
    start = array.offset * hidden
    return values[start : start + len(array) * hidden].reshape(len(array), hidden)
