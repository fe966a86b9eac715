"""Segments mode: a video's labelled segment rows held until they are all in, then let out
together, so that one commit makes all of them visible (or its one error row).

Inference actors label a video's chunks of segments in any order; the last chunk's rows carry
the video's segment count and metadata (`SEGMENTS_TOTAL`), and a video that failed midway ends
with an error row that counts the segment rows sent before it (a segment that inference could
not label is an error row too: the video's output is then one error row). `WholeVideos` runs in
the driver, between the pipeline and the file writer, and holds at most `max_held_bytes` of
rows (each carries its video's manifest values): whole videos leave early, in smaller files, to
stay under it, and when the unfinished videos alone hold more, the one holding most is given up
as a `too_large` error row (its later rows dropped), never an out-of-memory driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.output.runs import WriteStats
from vivit_batch.output.schema import (
    BYTES_READ,
    METADATA_COLUMNS,
    PREDICTION_COLUMNS,
    SEGMENT_COLUMNS,
    SEGMENT_SPAN_COLUMNS,
    SEGMENTS_TOTAL,
    VIEWS,
)
from vivit_batch.output.sink import file_rows
from vivit_batch.settings import BYTES, show

CLEARED_ON_ERROR = {*SEGMENT_COLUMNS, *PREDICTION_COLUMNS, "embedding", *METADATA_COLUMNS} | {
    VIEWS,
    BYTES_READ,
}
"""What a given-up video's error row leaves null: no segment, prediction or metadata, as on the
decode stage's error rows, and no clips or bytes counted in the run's figures."""


@dataclass
class _Arriving:
    pieces: list[pa.Table] = field(default_factory=list)
    segments: set[int] = field(default_factory=set)
    """the indices in, once each (a retried task may send a chunk again)"""
    expected: int | None = None
    bytes: int = 0


class WholeVideos:
    def __init__(self, max_held_bytes: int) -> None:
        self.max_held_bytes = max_held_bytes
        self._arriving: dict[str, _Arriving] = {}
        self._given_up: set[str] = set()
        self.held_bytes = 0
        """of the rows of unfinished videos"""

    @property
    def incomplete(self) -> int:
        """Videos some of whose rows are still to come."""
        return len(self._arriving)

    def files(
        self,
        batches: Iterable[pa.Table],
        rows_per_file: int,
        commit_every_s: float,
        labelled: WriteStats | None = None,
    ) -> Iterator[pa.Table]:
        """Whole videos, a file's worth at a time (`file_rows`: `rows_per_file` rows, or what
        is in once the rows held reach `max_held_bytes` or have waited `commit_every_s`; and
        those in when the batches stop coming), each counted into `labelled` as it completes.
        Raises if a video is still unfinished at the end."""
        completed = (list(self.add(batch)) for batch in batches)
        yield from file_rows(
            completed,
            rows_per_file,
            self.max_held_bytes,
            commit_every_s,
            held_elsewhere=lambda: self.held_bytes,
            labelled=labelled,
        )
        if self.incomplete:
            raise RuntimeError(
                f"the segment rows of {self.incomplete} videos did not all arrive; nothing of "
                "them was written (a rerun labels them)"
            )

    def add(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Take a batch of labelled rows; yield the rows of each video it completes, and the
        error row of each video given up to keep the rows held within `max_held_bytes`."""
        for video_id in pc.unique(batch["video_id"]).to_pylist():
            if video_id in self._given_up:
                continue
            rows = batch.filter(pc.equal(batch["video_id"], video_id))
            video = self._arriving.setdefault(video_id, _Arriving())
            video.pieces.append(rows)
            video.bytes += rows.nbytes
            self.held_bytes += rows.nbytes
            video.segments.update(rows["segment_index"].drop_null().to_pylist())
            totals = pc.max(rows[SEGMENTS_TOTAL]).as_py()
            if totals is not None:
                video.expected = totals
            if video.expected is not None and len(video.segments) == video.expected:
                yield _whole(pa.concat_tables(self._let_out(video_id).pieces))
        while self.held_bytes > self.max_held_bytes:
            yield self._give_up_largest()

    def _let_out(self, video_id: str) -> _Arriving:
        video = self._arriving.pop(video_id)
        self.held_bytes -= video.bytes
        return video

    def _give_up_largest(self) -> pa.Table:
        video_id = max(self._arriving, key=lambda held: self._arriving[held].bytes)
        unfinished, held = len(self._arriving), self.held_bytes
        video = self._let_out(video_id)
        self._given_up.add(video_id)
        message = (
            f"its labelled segment rows reached {_mib(video.bytes)} in the driver, which held "
            f"{_mib(held)} for {unfinished} unfinished video(s), more than output.max_held_bytes "
            f"({show(self.max_held_bytes, BYTES)}): raise output.max_held_bytes, make the "
            "manifest's values smaller (each is repeated on every segment row), or label longer "
            "segments (sampling.segment_s)"
        )
        return _error_row(video.pieces[0], "too_large", message)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _error_row(rows: pa.Table, code: str, message: str) -> pa.Table:
    """The video of `rows` as one error row: its manifest values and provenance kept, the
    columns `CLEARED_ON_ERROR` null."""
    row = rows.slice(0, 1)
    outcome = {"status": "error", "error_code": code, "error_message": message}
    for index, column in enumerate(row.schema):
        if column.name in outcome:
            row = row.set_column(index, column, pa.array([outcome[column.name]], column.type))
        elif column.name in CLEARED_ON_ERROR:
            row = row.set_column(index, column, pa.nulls(1, column.type))
    return row


def _whole(rows: pa.Table) -> pa.Table:
    """A video's output rows: its one error row, or its segments in order, each with the video's
    metadata (which the last chunk's rows carry)."""
    errors = rows.filter(pc.equal(rows["status"], "error"))
    if errors.num_rows:  # one, with no segment: segments that inference failed keep theirs
        error = errors.slice(0, 1)
        for name, kind in SEGMENT_COLUMNS.items():
            index = error.schema.get_field_index(name)
            if index >= 0:
                error = error.set_column(index, name, pa.nulls(1, kind))
        return error
    rows = rows.sort_by("segment_index")
    indices = rows["segment_index"].to_numpy()
    rows = rows.filter(pa.array(np.append(True, indices[1:] != indices[:-1])))  # once each
    last = rows.filter(pc.is_valid(rows[SEGMENTS_TOTAL])).slice(0, 1)
    for name in METADATA_COLUMNS.keys() - set(SEGMENT_SPAN_COLUMNS):
        value = last[name][0]
        index = rows.schema.get_field_index(name)
        rows = rows.set_column(index, name, pa.array([value.as_py()] * rows.num_rows, value.type))
    return rows
