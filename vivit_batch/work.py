"""Which videos a run into an existing output labels: `Work`, decided by plain functions over
Arrow tables, one block of rows at a time (the job runs them over the manifest's rows joined
with the committed rows by a hash join in Ray Data, `job.committed_join`; tests call them as
they are).

A committed video is skipped, unless the run relabels it: `run.mode` "force" relabels every
video of the manifest, "rerun_errors" those whose row is an error, and `run.refresh_changed`
those whose source changed since it was labelled. A relabelled video's new rows take the place
of its old ones (`output.replacing`). No function here sees more than one block: nothing holds
every committed id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.output import Output, Relabelled
from vivit_batch.output.schema import OUTCOME_COLUMNS, SEGMENT_COLUMNS, VERSION_COLUMNS
from vivit_batch.source_versions import changed_ids

if TYPE_CHECKING:
    import ray.data

# A committed row's columns once joined with the manifest's rows. Their names start with "_",
# which manifests may not use, so that they meet none of the manifest's columns.
COMMITTED_STATUS = "_committed_status"
HOLDER = "_holder"
"""the index, in the output's data files, of the file holding the video's rows"""
RECORDED = {name: f"_recorded_{name}" for name in VERSION_COLUMNS}
"""the source version the committed row recorded"""
ACTION = "_action"
ACTIONS = LABEL, RELABEL, KEEP_ERROR = "label", "relabel", "keep_error"
"""What a run does with a manifest row (`decide`): label a new video, relabel a committed one,
or leave its committed error row in place; the other committed videos are skipped."""


@dataclass(frozen=True)
class Work:
    """What a run into an existing output does with the videos it already holds."""

    relabelled: Relabelled
    """committed videos the run labels again: where their rows are, to be replaced in place"""
    rows: ray.data.Dataset | None = None
    """the manifest's rows to label and those whose error row is kept, each with its `ACTION`
    (`decide`'s rows, materialized); None when the output held no rows: the whole manifest"""
    archive: dict | None = None
    """the identity of the version that `--new-version` archives before the first commit"""
    errors_kept: int = 0
    """the manifest's videos whose committed error row the run leaves in place"""
    to_label: int = 0
    """the manifest's videos this run labels"""

    @classmethod
    def fresh(cls, manifest_rows: int, archive: dict | None = None) -> Work:
        """The work into an output that holds no rows (or whose rows `archive` moves aside):
        every video of the manifest."""
        return cls(Relabelled.none(), archive=archive, to_label=manifest_rows)

    def counted(self, counts: dict[str, int]) -> Work:
        """With the manifest's rows counted by action (`action_counts`, summed)."""
        return dataclasses.replace(
            self, errors_kept=counts[KEEP_ERROR], to_label=counts[LABEL] + counts[RELABEL]
        )


def committed_schema(refresh_changed: bool, segments: bool) -> pa.Schema:
    """What a run reads of each committed file."""
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("status", OUTCOME_COLUMNS["status"]),
            *([("segment_index", SEGMENT_COLUMNS["segment_index"])] if segments else []),
            *(VERSION_COLUMNS.items() if refresh_changed else ()),
        ]
    )


def committed_side(rows: pa.Table, holder: int) -> pa.Table:
    """The committed rows of one data file (`committed_schema`), the output's `holder`-th, as
    one row per video in the columns the join adds to the manifest's rows. A video of a
    segments output counts by its first segment, or by its one error row (which has no
    segment): it has one or the other, never both."""
    if "segment_index" in rows.column_names:
        rows = rows.filter(pc.fill_null(pc.equal(rows["segment_index"], 0), True))
    columns = {
        "video_id": rows["video_id"],
        COMMITTED_STATUS: rows["status"],
        HOLDER: pa.repeat(pa.scalar(holder, pa.int32()), rows.num_rows),
    }
    columns |= {RECORDED[name]: rows[name] for name in VERSION_COLUMNS if name in rows.column_names}
    return pa.table(columns)


def read_committed(file: pa.Table, output: Output, schema: pa.Schema) -> pa.Table:
    """The committed rows of one data file (`path`, `HOLDER`: its index), one per video: what
    `job.committed_join`'s Ray tasks run (here, not in `job`, whose imports take torch: a task
    worker would import it for nothing, about 2 CPU seconds and 250 MB)."""
    [(path, holder)] = zip(file["path"].to_pylist(), file[HOLDER].to_pylist(), strict=True)
    return committed_side(output.file_rows(path, schema), holder)


def decide(
    rows: pa.Table, mode: str, refresh_changed: bool, options: dict | None = None
) -> pa.Table:
    """Manifest rows (a block, with ids) joined with their videos' committed rows
    (`committed_side`, null where none) -> the rows to label and those whose error row is
    kept, each with its `ACTION` and `HOLDER`; the skipped rows left out. Sources are checked
    (`options`: storage options) for `refresh_changed` only, the committed rows' only."""
    rows = plain_strings(rows)
    status = rows[COMMITTED_STATUS]
    committed = pc.is_valid(status)
    error = pc.fill_null(pc.equal(status, "error"), False)
    relabel = {"force": committed, "rerun_errors": error}.get(mode, nowhere(rows))
    if refresh_changed:
        unchosen = pc.and_(committed, pc.invert(relabel))
        relabel = pc.or_(relabel, changed(rows, unchosen, options))
    left_alone = pc.if_else(error, KEEP_ERROR, pa.scalar(None, pa.string()))  # null: skipped
    action = pc.if_else(pc.invert(committed), LABEL, pc.if_else(relabel, RELABEL, left_alone))
    dropped = [COMMITTED_STATUS, *(n for n in RECORDED.values() if n in rows.column_names)]
    return rows.drop_columns(dropped).append_column(ACTION, action).filter(pc.is_valid(action))


def changed(rows: pa.Table, checked: pa.Array, options: dict | None) -> pa.Array:
    """Which of `rows` (`decide`'s) are among those `checked` and have a source that changed
    since their committed row recorded its version (`source_versions.changed_ids`)."""
    known = rows.filter(checked)
    if not known.num_rows:
        return nowhere(rows)
    recorded = known.select(["video_id", *RECORDED.values()])
    ids = changed_ids(known, recorded.rename_columns(["video_id", *VERSION_COLUMNS]), options)
    return pc.is_in(rows["video_id"], ids["video_id"])


def nowhere(rows: pa.Table) -> pa.Array:
    return pa.repeat(False, rows.num_rows)


def plain_strings(rows: pa.Table) -> pa.Table:
    """`rows` with large strings and binaries as plain ones: Polars, which Ray Data's join
    runs on, hands every string column back as a large string."""
    wide = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    schema = pa.schema(field.with_type(wide.get(field.type, field.type)) for field in rows.schema)
    return rows.cast(schema)


def action_counts(rows: pa.Table) -> pa.Table:
    """How many of `decide`'s rows have each action: one row, a column each."""
    actions = rows[ACTION]
    return pa.table({name: [pc.sum(pc.equal(actions, name)).as_py() or 0] for name in ACTIONS})


def summed(counts: Iterable[pa.Table]) -> dict[str, int]:
    """`action_counts` of every block, added up."""
    total = dict.fromkeys(ACTIONS, 0)
    for table in counts:
        for name in total:
            total[name] += pc.sum(table[name]).as_py() or 0
    return total


def relabelled_holders(rows: pa.Table) -> pa.Table:
    """The ids of `decide`'s rows to relabel, and the file holding each (`HOLDER`)."""
    return rows.filter(pc.equal(rows[ACTION], RELABEL)).select(["video_id", HOLDER])


def relabelled(
    holders: Iterable[pa.Table], files: list[str], partition_by: tuple[str, ...] = ()
) -> Relabelled:
    """Where the rows of the relabelled videos are, from `relabelled_holders`' tables and the
    output's data `files` that `HOLDER` indexes."""
    table = pa.concat_tables([EMPTY_HOLDERS, *holders])
    ids, indices = table["video_id"].combine_chunks(), table[HOLDER].combine_chunks()
    return Relabelled(ids, indices, files, partition_by)


def to_label(rows: pa.Table) -> pa.Table:
    """`decide`'s rows that the run labels, as the manifest gave them (with ids)."""
    chosen = rows.filter(pc.not_equal(rows[ACTION], KEEP_ERROR))
    return chosen.drop_columns([ACTION, HOLDER])


EMPTY_HOLDERS = pa.table({"video_id": pa.array([], pa.string()), HOLDER: pa.array([], pa.int32())})
