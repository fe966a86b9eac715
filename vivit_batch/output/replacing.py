"""Relabelling without a gap: a video's new rows replace its old ones in the file that holds them.

A run that labels committed videos again (`--force`, `--rerun-errors`, `--refresh-changed`)
never takes their old rows out first. When a staged file holds new rows of such videos, each
committed file holding their old rows is rewritten with the new rows in place of the old (one
atomic replace of that file, fenced like any commit), and the staged file is committed with the
videos that had no row only. A video's rows stay in one file throughout, so a reader sees its
old rows or its new ones, never both and never neither, and a run that stops at any point
leaves every video it did not relabel with its previous row. Rows moved into an older file take
that file's partition values (`run_date`): its folder decides them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vivit_batch.output.dataset import Fence, Output, parquet_bytes


@dataclass(frozen=True)
class Relabelled:
    """Where the committed rows of the videos a run relabels are."""

    ids: pa.Array
    """the relabelled videos' ids"""
    holders: pa.Array
    """for each id, the index in `files` of the committed file holding its rows"""
    files: list[str]
    """committed data files (those of the output, or only those holding relabelled rows)"""
    partition_by: tuple[str, ...] = ()

    @classmethod
    def none(cls, partition_by: tuple[str, ...] = ()) -> Relabelled:
        """No video relabelled."""
        return cls(pa.array([], pa.string()), pa.array([], pa.int32()), [], partition_by)

    def __len__(self) -> int:
        return len(self.ids)

    def holding(self, video_ids: pa.Array) -> dict[str, pa.Array]:
        """The committed files holding rows of any of `video_ids`, each with those ids."""
        video_ids = pc.unique(video_ids)
        positions = pc.index_in(video_ids, value_set=self.ids)
        found = pc.is_valid(positions)
        holders = pc.take(self.holders, positions.filter(found))
        video_ids = video_ids.filter(found)
        return {
            self.files[holder]: video_ids.filter(pc.equal(holders, holder))
            for holder in pc.unique(holders).to_pylist()
        }


def commit_replacing(
    output: Output, lock: Fence, staged: dict, relabelled: Relabelled
) -> tuple[list[str], int]:
    """Commit the file `FileWriter` staged (a row of its output), its relabelled videos' rows
    moved into the committed files that hold their old rows. Returns the files committed and
    how many old rows were replaced."""
    if len(relabelled):
        table = pq.read_table(staged["staged"], filesystem=output.filesystem)
        holding = relabelled.holding(table["video_id"])
        if holding:
            return _commit_into_holders(output, lock, staged, table, holding, relabelled)
    output.commit(staged["staged"], staged["final"], lock)
    return [staged["final"]], 0


def _commit_into_holders(
    output: Output,
    lock: Fence,
    staged: dict,
    table: pa.Table,
    holding: dict[str, pa.Array],
    relabelled: Relabelled,
) -> tuple[list[str], int]:
    """`table`'s rows of the videos in `holding` into the files holding their old rows; the
    rest (videos without a row) committed as the staged file."""
    replaced = 0
    for path, ids in holding.items():
        new_rows = table.filter(pc.is_in(table["video_id"], ids))
        replaced += replace_rows(output, lock, path, new_rows, relabelled.partition_by)
    moved = pa.concat_arrays(list(holding.values()))
    rest = table.filter(pc.invert(pc.is_in(table["video_id"], moved)))
    files = list(holding)
    if rest.num_rows:
        final = staged["final"]
        output.write(final, parquet_bytes(rest), lock, stage_as=posixpath.basename(final))
        files.append(final)
    output.filesystem.rm_file(staged["staged"])
    return files, replaced


def replace_rows(
    output: Output, lock: Fence, path: str, new_rows: pa.Table, partition_by: tuple[str, ...]
) -> int:
    """Replace the committed file at `path` by itself with the rows of `new_rows`' videos
    swapped for `new_rows` (one fenced commit). Returns the old rows replaced."""
    old = pq.read_table(path, filesystem=output.filesystem)
    stale = pc.is_in(old["video_id"], pc.unique(new_rows["video_id"]))
    for name in partition_by:  # the folder's value, which every row of the file has
        value = pa.array([old[name][0].as_py()] * new_rows.num_rows, old.schema.field(name).type)
        new_rows = new_rows.set_column(new_rows.schema.get_field_index(name), name, value)
    kept = old.filter(pc.invert(stale))
    merged = pa.concat_tables([kept, new_rows], promote_options="permissive")
    output.write(path, parquet_bytes(merged), lock, stage_as=posixpath.basename(path))
    return old.num_rows - kept.num_rows
