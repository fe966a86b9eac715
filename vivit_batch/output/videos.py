"""Segments mode: a video's labelled segment rows held until they are all in, then let out
together, so that one commit makes all of them visible (or its one error row).

Inference actors label a video's chunks of segments in any order; the last chunk's rows carry
the video's segment count and metadata (`SEGMENTS_TOTAL`), and a video that failed midway ends
with an error row that counts the segment rows sent before it (a segment that inference could
not label is an error row too: the video's output is then one error row). `WholeVideos` runs in
the driver, between the pipeline and the file writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.output.schema import (
    METADATA_COLUMNS,
    SEGMENT_COLUMNS,
    SEGMENT_SPAN_COLUMNS,
    SEGMENTS_TOTAL,
)


@dataclass
class _Arriving:
    pieces: list[pa.Table] = field(default_factory=list)
    segments: set[int] = field(default_factory=set)
    """the indices in, once each (a retried task may send a chunk again)"""
    expected: int | None = None


class WholeVideos:
    def __init__(self) -> None:
        self._arriving: dict[str, _Arriving] = {}

    @property
    def incomplete(self) -> int:
        """Videos some of whose rows are still to come."""
        return len(self._arriving)

    def add(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Take a batch of labelled rows; yield the rows of each video it completes."""
        for video_id in pc.unique(batch["video_id"]).to_pylist():
            rows = batch.filter(pc.equal(batch["video_id"], video_id))
            video = self._arriving.setdefault(video_id, _Arriving())
            video.pieces.append(rows)
            video.segments.update(rows["segment_index"].drop_null().to_pylist())
            totals = pc.max(rows[SEGMENTS_TOTAL]).as_py()
            if totals is not None:
                video.expected = totals
            if video.expected is not None and len(video.segments) == video.expected:
                del self._arriving[video_id]
                yield _whole(pa.concat_tables(video.pieces))


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
