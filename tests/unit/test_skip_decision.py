"""Which manifest rows a run into an existing output labels, relabels, or leaves, decided block
by block over the manifest's rows joined with the committed rows (`work`), without Ray: the
join is pyarrow's here, Ray Data's hash join in a run.

The expected figures are what the broadcast decision (`Work.over` over every committed id,
`select_relabelled`, `count_listed`) gave on the same output and manifest before the join
replaced it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vivit_batch.job.committed_join import MIN_PARTITIONS, ROWS_PER_PARTITION, join_partitions
from vivit_batch.output import Output
from vivit_batch.output.schema import VERSION_COLUMNS
from vivit_batch.source_versions import source_version
from vivit_batch.work import (
    ACTION,
    HOLDER,
    Work,
    action_counts,
    committed_schema,
    committed_side,
    decide,
    plain_strings,
    relabelled,
    relabelled_holders,
    summed,
    to_label,
)

FILES = ["out/f1.parquet", "out/f2.parquet"]
COMMITTED = {
    FILES[0]: [("a", "ok"), ("b", "error"), ("c", "ok")],
    FILES[1]: [("d", "error"), ("e", "ok"), ("gone", "ok"), ("gone_err", "error")],
}
"""two committed files: ok and error rows, two of them of videos no longer in the manifest"""
MANIFEST = ["a", "b", "c", "d", "e", "new1", "new2"]
EVERY_COMMITTED_ONE = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
"""the manifest's committed videos, each with the index of its file"""


@dataclass(frozen=True)
class Labelled:
    videos: dict[str, Path]
    committed: list[pa.Table]
    """the committed rows of each file, as a task reads them"""


@pytest.fixture()
def labelled(tmp_path) -> Labelled:
    """A file per video, and the committed rows recording their versions."""
    videos = {name: tmp_path / f"{name}.mp4" for name in MANIFEST + ["gone", "gone_err"]}
    for path in videos.values():
        path.write_bytes(b"0123456789")
    versions = {name: source_version(str(path), None) for name, path in videos.items()}
    blocks = []
    for rows in COMMITTED.values():
        records = [{"video_id": v, "status": s, **versions[v]} for v, s in rows]
        blocks.append(pa.Table.from_pylist(records, committed_schema(True, segments=False)))
    return Labelled(videos, blocks)


def manifest(videos: dict[str, Path]) -> pa.Table:
    uris = [str(videos[name]) for name in MANIFEST]
    return pa.table({"video_id": MANIFEST, "uri": uris, "split": ["train"] * len(MANIFEST)})


def as_polars_hands_back(table: pa.Table) -> pa.Table:
    """Strings as large strings, as Ray Data's join (Polars) returns them."""
    fields = [f.with_type(pa.large_string()) if f.type == pa.string() else f for f in table.schema]
    return table.cast(pa.schema(fields))


def decided(labelled: Labelled, mode: str, refresh_changed: bool) -> tuple[Work, list[pa.Table]]:
    """The work as a run decides it: the join's output in two partitions, each decided."""
    committed = pa.concat_tables(committed_side(b, i) for i, b in enumerate(labelled.committed))
    joined = manifest(labelled.videos).join(committed, "video_id", join_type="left outer")
    joined = as_polars_hands_back(joined.sort_by("video_id"))
    blocks = [joined.slice(0, 4), joined.slice(4)]
    rows = [decide(block, mode, refresh_changed) for block in blocks]
    work = Work(relabelled([relabelled_holders(r) for r in rows], FILES))
    return work.counted(summed(action_counts(r) for r in rows)), rows


@pytest.mark.parametrize(
    ("mode", "refresh_changed", "labels", "errors_kept", "relabelled_in"),
    [
        ("incremental", False, {"new1", "new2"}, 2, {}),
        (
            "force",
            False,
            {"a", "b", "c", "d", "e", "new1", "new2"},
            0,
            EVERY_COMMITTED_ONE,
        ),
        ("rerun_errors", False, {"b", "d", "new1", "new2"}, 0, {"b": 0, "d": 1}),
        ("incremental", True, {"c", "new1", "new2"}, 2, {"c": 0}),
        ("rerun_errors", True, {"b", "c", "d", "new1", "new2"}, 0, {"b": 0, "c": 0, "d": 1}),
        ("force", True, set(MANIFEST), 0, EVERY_COMMITTED_ONE),
    ],
)
def test_the_joined_decision_equals_the_broadcast_one_on_a_mixed_manifest(
    labelled, mode, refresh_changed, labels, errors_kept, relabelled_in
):
    """New videos, committed ok and error rows, a changed source and committed videos the
    manifest no longer lists, in each mode: the same videos labelled, the same error rows
    kept, the same videos relabelled in the files holding them."""
    labelled.videos["c"].write_bytes(b"a longer upload than before")
    work, rows = decided(labelled, mode, refresh_changed)
    assert (work.to_label, work.errors_kept) == (len(labels), errors_kept)
    chosen = pa.concat_tables(to_label(r) for r in rows)
    assert set(chosen["video_id"].to_pylist()) == labels
    found = work.relabelled.holding(pa.array(MANIFEST))
    where = {v: FILES.index(path) for path, ids in found.items() for v in ids.to_pylist()}
    assert where == relabelled_in


def test_the_rows_to_label_are_the_manifest_rows_as_given(labelled):
    """What the pipeline gets: the manifest's columns, in its order and types (Polars' large
    strings back as strings), with none of the decision's."""
    _, rows = decided(labelled, "force", refresh_changed=False)
    chosen = pa.concat_tables(to_label(r) for r in rows).sort_by("video_id")
    given = manifest(labelled.videos)
    assert chosen.schema == given.schema
    assert chosen.to_pylist() == given.sort_by("video_id").to_pylist()


def test_a_segments_video_counts_once_by_its_first_segment_or_its_error_row():
    rows = pa.table(
        {
            "video_id": ["a", "a", "a", "b", "c"],
            "status": ["ok", "ok", "ok", "error", "ok"],
            "segment_index": pa.array([1, 0, 2, None, 0], pa.int32()),
        }
    )
    side = committed_side(rows, holder=1)
    assert side["video_id"].to_pylist() == ["a", "b", "c"]
    assert side[HOLDER].to_pylist() == [1, 1, 1]
    joined = pa.table({"video_id": ["a", "b", "d"], "uri": ["1", "2", "3"]}).join(
        side, "video_id", join_type="left outer"
    )
    counts = summed([action_counts(decide(joined, "incremental", False))])
    assert counts == {"label": 1, "relabel": 0, "keep_error": 1}


def test_a_file_written_before_rows_recorded_versions_reads_them_as_unknown(tmp_path):
    """Its rows then count as changed for `--refresh-changed` (`source_differs`)."""
    output = Output(str(tmp_path / "out"))
    Path(output.root).mkdir()
    path = output.path("part-old.parquet")
    pq.write_table(pa.table({"video_id": ["a"], "status": ["ok"], "label": ["cat"]}), path)
    rows = output.file_rows(path, committed_schema(refresh_changed=True, segments=False))
    assert rows.schema == committed_schema(refresh_changed=True, segments=False)
    assert rows.to_pylist() == [{"video_id": "a", "status": "ok"} | dict.fromkeys(VERSION_COLUMNS)]


def test_skipped_rows_leave_the_decision_and_large_strings_come_back_plain():
    joined = as_polars_hands_back(
        pa.table(
            {
                "video_id": ["kept", "skipped"],
                "uri": ["1", "2"],
                "_committed_status": ["error", "ok"],
                HOLDER: pa.array([0, 0], pa.int32()),
            }
        )
    )
    rows = decide(joined, "incremental", False)
    assert rows["video_id"].to_pylist() == ["kept"] and rows[ACTION].to_pylist() == ["keep_error"]
    assert plain_strings(joined).schema.field("uri").type == pa.string()


@pytest.mark.parametrize("rows", [1_000, 2_000_000, 20_000_000, 200_000_000])
def test_a_join_task_holds_at_most_a_partition_whatever_the_rows(rows):
    """Ten times the rows make ten times the partitions (past the floor): the rows of one
    partition, what one join task holds, stay under `ROWS_PER_PARTITION`."""
    partitions = join_partitions(rows)
    assert partitions >= MIN_PARTITIONS
    assert rows / partitions <= ROWS_PER_PARTITION
    assert partitions == MIN_PARTITIONS or rows / partitions > ROWS_PER_PARTITION * 0.9
