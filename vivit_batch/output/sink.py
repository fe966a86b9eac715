"""Writing rows: the driver cuts the labelled rows into files, stages and commits each.

`file_rows` gathers the labelled rows as they come out of the pipeline (in segments mode the
rows of whole videos, from `WholeVideos`) and lets out a file's worth at a time: at most
`rows_per_file` rows, or what is in once the rows held reach `max_held_bytes`, or once the
oldest of them has waited `commit_every_s` (so that a crash loses at most that much
labelling), and what it holds when the pipeline stops or fails (so that a stop loses none of
it). `FileWriter` turns those rows into files of at most `rows_per_file` rows, never
splitting a video's rows (a video with more gets a file of its own), in output column order,
stages each (`Output.stage`) and returns one row per file: where it is staged, where it goes,
and what it holds. The driver commits each one (`commit_staged`) inside the lock's fence, so
only the process that holds the lease ever makes rows visible; rows of videos the run relabels
take the place of their old rows (`replacing`). File names carry the run id and a digest of
the video ids inside, so staging the same rows again rewrites the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.errors import Interrupted
from vivit_batch.output.dataset import Fence, Output, parquet_bytes
from vivit_batch.output.replacing import Relabelled, commit_replacing
from vivit_batch.output.runs import WriteStats
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    VIEWS,
)
from vivit_batch.redact import error_text

log = logging.getLogger("vivit_batch")
NOTHING_RELABELLED = Relabelled.none()
STAGED_SCHEMA = pa.schema([("staged", pa.string()), ("final", pa.string()), ("stats", pa.string())])


@dataclass(frozen=True)
class FileWriter:
    output: Output
    run_id: str
    schema: pa.Schema
    rows_per_file: int
    partition_values: dict[str, str] = dataclasses.field(default_factory=dict)
    """this run's value of each partition column"""

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Sorted, so that a retried task cuts the same files.
        keys = [(n, "ascending") for n in ("video_id", "segment_index") if n in batch.column_names]
        batch = batch.sort_by(keys)
        staged = []
        for start, length in self.file_slices(batch.column("video_id").to_pylist()):
            rows = batch.slice(start, length)
            table = self.to_output_table(rows)
            final = self.final_path(table)
            name = final.rsplit("/", 1)[1]
            path = self.output.stage(parquet_bytes(table), self.run_id, name)
            staged.append((path, final, stats_of(rows).to_json()))
        return pa.Table.from_pylist(
            [dict(zip(STAGED_SCHEMA.names, row, strict=True)) for row in staged], STAGED_SCHEMA
        )

    def file_slices(self, sorted_ids: list[str]) -> list[tuple[int, int]]:
        """(start, length) of each file's rows: whole videos, at most `rows_per_file` rows
        unless one video has more."""
        slices: list[tuple[int, int]] = []
        video_start = 0
        for end in range(1, len(sorted_ids) + 1):
            if end < len(sorted_ids) and sorted_ids[end] == sorted_ids[video_start]:
                continue
            length = end - video_start
            if slices and slices[-1][1] + length <= self.rows_per_file:
                slices[-1] = (slices[-1][0], slices[-1][1] + length)
            else:
                slices.append((video_start, length))
            video_start = end
        return slices

    def to_output_table(self, table: pa.Table) -> pa.Table:
        """Output columns in schema order, then the manifest's; internal `_` columns dropped."""
        for name, value in self.partition_values.items():
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
        passthrough = [
            n for n in table.column_names if n not in self.schema.names and not n.startswith("_")
        ]
        columns = [table.column(f.name).cast(f.type) for f in self.schema]
        columns += [table.column(name) for name in passthrough]
        return pa.Table.from_arrays(columns, names=self.schema.names + passthrough)

    def final_path(self, table: pa.Table) -> str:
        return posixpath.join(self.folder, file_name(self.run_id, table.column("video_id")))

    @property
    def folder(self) -> str:
        """Where this run's files go: Hive-style `name=value` folders, every row of the run
        having the run's values."""
        folders = [f"{name}={value}" for name, value in self.partition_values.items()]
        return self.output.path(*folders)


def file_rows(
    completed: Iterable[list[pa.Table]],
    rows_per_file: int,
    max_held_bytes: int,
    commit_every_s: float,
    held_elsewhere: Callable[[], int] = lambda: 0,
    clock: Callable[[], float] = time.monotonic,
    labelled: WriteStats | None = None,
) -> Iterator[pa.Table]:
    """The rows of whole videos, a file's worth at a time. `completed`: for each batch that
    comes out of the pipeline, the rows of the videos it completes (tables of any columns'
    order), each also counted into `labelled`. A file's worth: `rows_per_file` rows; or what is
    in once the rows held, with `held_elsewhere` (a video's rows still waiting for the rest),
    pass `max_held_bytes`; or once the oldest of them came in `commit_every_s` ago (looked at as
    batches come in). When `completed` raises (a stop signal's `Interrupted`, a failure; not the
    lost lock's KeyboardInterrupt: nothing more may be committed then), the rows held come out
    first, then it raises again: labelled videos are not lost to a stop."""
    ready: list[pa.Table] = []
    rows = nbytes = 0
    oldest = 0.0
    try:
        for tables in completed:
            if tables and not ready:
                oldest = clock()
            ready += tables
            rows += sum(table.num_rows for table in tables)
            nbytes += sum(table.nbytes for table in tables)
            if labelled is not None:
                for table in tables:
                    labelled.add(stats_of(table))
            held = held_elsewhere() + nbytes
            waited = clock() - oldest
            if ready and (
                rows >= rows_per_file or held > max_held_bytes or waited >= commit_every_s
            ):
                # let go before yielding: a signal once the caller has them finds none held
                file, ready, rows, nbytes = _concatenated(ready), [], 0, 0
                yield file
    except (Interrupted, Exception) as ended:
        if ready:
            try:
                yield _concatenated(ready)
            except GeneratorExit:  # their commit failed: its error, not this one, ends the run
                if not isinstance(ended, Interrupted):
                    log.error(
                        "the pipeline failed (%s); committing the %d rows it held failed too:",
                        error_text(ended),
                        rows,
                    )
                raise
        raise
    if ready:
        yield _concatenated(ready)


def _concatenated(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default")


def file_name(run_id: str, video_ids: pa.ChunkedArray | pa.Array) -> str:
    """A data file's name: `part-<run_id>-<digest>.parquet`, the digest of the video ids in it
    (so the same rows staged again make the same file, not a second one)."""
    ids = "\n".join(sorted(video_ids.to_pylist()))
    digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
    return f"part-{run_id}-{digest}.parquet"


def commit_staged(
    output: Output, lock: Fence, staged: dict, relabelled: Relabelled | None = None
) -> WriteStats:
    """Commit one file `FileWriter` staged (a row of its output), the new rows of `relabelled`
    videos in place of their old ones (`replacing`); returns what it holds."""
    files, replaced = commit_replacing(output, lock, staged, relabelled or NOTHING_RELABELLED)
    stats = WriteStats.from_json(staged["stats"])
    stats.files = [output.uri_of(path) for path in files]
    stats.rows_replaced = replaced
    return stats


def stats_of(table: pa.Table) -> WriteStats:
    def total(name: str) -> float:
        return pc.sum(table.column(name)).as_py() or 0

    codes = [c for c in table.column("error_code").to_pylist() if c]
    on_nvdec = pc.fill_null(table.column(DECODED_ON_NVDEC), False)
    return WriteStats(
        rows=table.num_rows,
        videos=len(pc.unique(table.column("video_id"))),
        status=Counter(table.column("status").to_pylist()),
        error_codes=Counter(codes),
        clips=int(total(VIEWS)),
        decode_seconds=float(total(DECODE_SECONDS)),
        nvdec_clips=int(pc.sum(pc.if_else(on_nvdec, table.column(VIEWS), 0)).as_py() or 0),
        nvdec_decode_seconds=float(
            pc.sum(pc.if_else(on_nvdec, table.column(DECODE_SECONDS), 0.0)).as_py() or 0
        ),
        inference_seconds=float(total(INFERENCE_SECONDS)),
        bytes_read=int(total(BYTES_READ)),
        devices=pc.unique(table.column(INFERENCE_DEVICE)).drop_null().to_pylist(),
    )
