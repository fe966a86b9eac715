"""Which videos a run into an existing output labels: `Work`, from plain functions over Arrow
tables (the job maps them over the manifest's blocks with Ray Data; tests call them as they are).

A committed video is skipped, unless the run relabels it: `run.mode` "force" relabels every
video of the manifest, "rerun_errors" those whose row is an error, and `run.refresh_changed`
those whose source changed since it was labelled. A relabelled video's new rows take the place
of its old ones (`output.replacing`). Ids stay in Arrow arrays (no Python set of 100,000
strings in the driver).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.output import Relabelled
from vivit_batch.output.schema import VERSION_COLUMNS
from vivit_batch.source_versions import changed_ids

EMPTY_IDS = pa.array([], pa.string())


@dataclass(frozen=True)
class Work:
    """What a run into an existing output does with the videos it already holds."""

    skip: pa.Array
    """committed ids the run leaves as they are"""
    kept_errors: pa.Array
    """committed ids of error rows the run leaves as they are"""
    relabelled: Relabelled
    """committed videos the run labels again: where their rows are, to be replaced in place"""
    archive: dict | None = None
    """the identity of the version that `--new-version` archives before the first commit"""
    errors_kept: int = 0
    """the manifest's videos whose committed error row the run leaves in place"""
    to_label: int = 0
    """the manifest's videos this run labels"""

    @classmethod
    def over(
        cls,
        committed: dict[str, pa.Table],
        relabel: pa.Array,
        partition_by: tuple[str, ...] = (),
        archive: dict | None = None,
    ) -> Work:
        """The work over `committed` (each file's rows, `committed_columns`) when the run
        relabels the ids in `relabel` (`select_relabelled`); not counted yet."""
        return cls(
            skip=without(all_ids(committed.values()), relabel),
            kept_errors=without(error_ids(committed.values()), relabel),
            relabelled=Relabelled.locate(committed, relabel, partition_by),
            archive=archive,
        )

    def counted(self, manifest_rows: int, listed: dict[str, int]) -> Work:
        """With the manifest's counts of `skip` and `kept_errors` (`count_listed` summed)."""
        return dataclasses.replace(
            self,
            errors_kept=listed["kept_errors"],
            to_label=manifest_rows - listed["skip"],
        )


def committed_columns(refresh_changed: bool) -> list[str]:
    """What a run reads of each committed file."""
    return ["video_id", "status", *(VERSION_COLUMNS if refresh_changed else ())]


def relabel_candidates(committed: pa.Table, mode: str) -> pa.Array:
    """Committed ids that `mode` relabels if the manifest still lists them."""
    if mode == "force":
        return committed["video_id"].combine_chunks()
    if mode == "rerun_errors":
        return committed.filter(pc.equal(committed["status"], "error"))["video_id"].combine_chunks()
    return EMPTY_IDS


def select_relabelled(
    table: pa.Table, candidates: pa.Array, recorded: pa.Table | None, options: dict | None
) -> pa.Table:
    """The ids of manifest rows (a block, with ids) to relabel: the candidates it lists, and with
    `recorded` (committed rows with their source versions) those whose source changed."""
    ids = table.filter(pc.is_in(table["video_id"], candidates)).select(["video_id"])
    if recorded is not None:
        ids = pa.concat_tables([ids, changed_ids(table, recorded, options)])
    return ids


def error_ids(tables) -> pa.Array:
    """Ids of the error rows in `tables` (committed rows)."""
    return all_ids(t.filter(pc.equal(t["status"], "error")) for t in tables)


def count_listed(table: pa.Table, ids: dict[str, pa.Array]) -> pa.Table:
    """How many rows of `table` (a block of manifest rows, with ids) have one of each set of
    `ids`: one column per name."""
    video_ids = table["video_id"]
    return pa.table(
        {name: [pc.sum(pc.is_in(video_ids, listed)).as_py() or 0] for name, listed in ids.items()}
    )


def all_ids(tables) -> pa.Array:
    chunks = [chunk for table in tables for chunk in table["video_id"].chunks]
    return pa.concat_arrays(chunks) if chunks else EMPTY_IDS


def without(ids: pa.Array, dropped: pa.Array) -> pa.Array:
    return ids.filter(pc.invert(pc.is_in(ids, dropped)))
