"""The training examples in an output: the `ok` rows that have a truth value, read file by file
(only the columns needed, only the rows kept), in a fixed order so that the same output always
gives the same examples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.config import ConfigError
from vivit_batch.output import RESERVED_COLUMNS, Output

WRITTEN_COLUMNS = RESERVED_COLUMNS | {"video_id", "uri"}
"""What vivit-batch writes; the other columns are the manifest's."""
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


def read_examples(output: Output, truth_column: str) -> Examples:
    """The `ok` rows with a truth value in `truth_column` (null and "" are no value), sorted by
    `ORDER`. `ConfigError` when the output has no such manifest column."""
    columns = output.columns()
    known = [name for name in columns if name not in WRITTEN_COLUMNS]
    if truth_column not in known:
        raise ConfigError(
            f"--truth-column {truth_column}: the output has no such manifest column; it has "
            + (", ".join(known) or "none")
            + ". Put the true labels in a manifest column (e.g. `label` with "
            "manifest.column_prefix=manifest_, read as manifest_label) and label the manifest"
        )
    order = [name for name in ORDER if name in columns]
    kept = []
    for _, table in output.each_file([*order, "status", truth_column, "embedding", "model_sha256"]):
        truth = pc.cast(table[truth_column], pa.string())
        table = table.set_column(table.schema.get_field_index(truth_column), "truth", truth)
        # a null truth compares as null, which `filter` drops like the empty ones
        kept.append(table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.not_equal(truth, ""))))
    rows = pa.concat_tables(kept).sort_by([(n, "ascending") for n in order])
    return Examples(
        embeddings=embedding_matrix(rows["embedding"]),
        truth=np.asarray(rows["truth"].to_pylist(), dtype=object),
        videos=pc.rank(rows["video_id"], tiebreaker="dense").to_numpy() - 1,
        weights_sha256=sorted(pc.unique(rows["model_sha256"]).drop_null().to_pylist()),
    )


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(rows, hidden) float32 of a column of embeddings (fixed-size lists, none null)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    hidden = array.type.list_size
    values = array.values.to_numpy(zero_copy_only=False)
    start = array.offset * hidden
    return values[start : start + len(array) * hidden].reshape(len(array), hidden)
