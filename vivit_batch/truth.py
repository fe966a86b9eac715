"""A person's labels for an output's videos, as `train-head` and `review` read them: the values
of a manifest column carried into the output when its rows were written, and those of labels
files given later (`--labels`: CSV, JSONL or Parquet with `video_id` and the column, e.g.
review's file once filled in), matched by video_id. A file's value for a video wins over the
output's (it is the later word). Null and "" are no value."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.errors import ConfigError
from vivit_batch.manifest.read import FORMATS_BY_EXTENSION, batches
from vivit_batch.output import Output, check_truth_column, manifest_columns

LABELS_FORMATS = ("csv", "jsonl", "parquet")


@dataclass(frozen=True)
class Truth:
    column: str
    in_output: bool
    """whether the output has `column` among its manifest columns"""
    files: tuple[str, ...] = ()
    given: pa.Table | None = None
    """(video_id, truth) of every video the files give a value, once each"""

    @property
    def output_columns(self) -> list[str]:
        """What to read of the output, besides `video_id`, to know its rows' values."""
        return [self.column] if self.in_output else []

    def values(self, rows: pa.Table) -> pa.ChunkedArray:
        """Each of `rows`' truth value as text (null or "": none); `rows` has `video_id` and
        `output_columns`."""
        if self.in_output:
            written = pc.cast(rows[self.column], pa.string())
        else:
            written = pa.chunked_array([pa.nulls(rows.num_rows, pa.string())])
        if self.given is None:
            return written
        later = self.given["truth"].take(pc.index_in(rows["video_id"], self.given["video_id"]))
        return pc.coalesce(later, written)

    def describe(self) -> str:
        """'column C' (the output's), or 'column C of [the output, ]FILE, ...'."""
        if not self.files:
            return f"column {self.column}"
        sources = (["the output"] if self.in_output else []) + list(self.files)
        return f"column {self.column} of {', '.join(sources)}"


def has_value(truth: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a truth value is neither null nor empty."""
    return pc.fill_null(pc.not_equal(truth, ""), False)


def read_truth(output: Output, column: str, files: list[str] | None = None, fix: str = "") -> Truth:
    """Where `column`'s values come from: the output's manifest column and the labels `files`.
    `ConfigError` when a file cannot be read or lacks a column, when the files give a video two
    values, or, without files, when the output has no such manifest column (`fix` ends that
    message)."""
    columns = output.columns()
    if not files:
        check_truth_column(columns, column, fix)
        return Truth(column, in_output=True)
    return Truth(
        column,
        in_output=column in manifest_columns(columns),
        files=tuple(files),
        given=read_labels(files, column, output.storage_options),
    )


def read_labels(files: list[str], column: str, options: dict | None = None) -> pa.Table:
    """(video_id, truth) of the rows of `files` that have a value in `column`, once per video;
    `ConfigError` when one cannot be read or lacks a column, or they give a video two values."""
    pairs = pa.concat_tables([labels_of(uri, column, options) for uri in files])
    pairs = pairs.group_by(["video_id", "truth"]).aggregate([])
    counted = pc.value_counts(pairs["video_id"])
    twice = counted.filter(pc.greater(counted.field("counts"), 1)).field("values")
    if len(twice):
        raise ConfigError(
            f"--labels {', '.join(files)}: more than one {column} for video_id "
            f"{', '.join(twice.to_pylist()[:5])}{' ...' if len(twice) > 5 else ''}: keep one"
        )
    return pairs


def labels_of(uri: str, column: str, options: dict | None) -> pa.Table:
    """(video_id, truth) of one labels file's rows that have a value in `column`."""
    fmt = FORMATS_BY_EXTENSION.get(posixpath.splitext(uri)[1].lower())
    if fmt not in LABELS_FORMATS:
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
    return pairs.filter(has_value(truth))
