"""The output dataset without Ray: staging and committing, the sink's files, relabelled rows
replaced in place, versions, run reports. What readers (pyarrow, pandas, DuckDB) see at each
step."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from vivit_batch.errors import Interrupted
from vivit_batch.output import (
    ErrorBudget,
    FileWriter,
    Output,
    RunReport,
    RunWriter,
    Unlocked,
    WriteStats,
    commit_staged,
    file_rows,
    output_schema,
)
from vivit_batch.output.replacing import Relabelled
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    METADATA_COLUMNS,
    PREDICTION_COLUMNS,
    PROVENANCE_COLUMNS,
    VERSION_COLUMNS,
    VIEWS,
)
from vivit_batch.report import output_stats, run_summary, summary_text
from vivit_batch.work import (
    committed_schema,
    committed_side,
    decide,
    relabelled,
    relabelled_holders,
)

HIDDEN = 4


def labelled_rows(ids: list[str], errors: tuple[str, ...] = (), split: str = "train") -> pa.Table:
    """Rows as the inference stage hands them to the sink: output columns, internal columns
    and a manifest column."""
    rows = len(ids)
    columns = {
        "video_id": pa.array(ids),
        "uri": pa.array([f"/videos/{i}.mp4" for i in ids]),
        "status": pa.array(["error" if i in errors else "ok" for i in ids]),
        "error_code": pa.array(["unreadable" if i in errors else None for i in ids]),
        "error_message": pa.nulls(rows, pa.string()),
        **{name: pa.nulls(rows, kind) for name, kind in PREDICTION_COLUMNS.items()},
        "embedding": pa.nulls(rows, pa.list_(pa.float32(), HIDDEN)),
        **{name: pa.nulls(rows, kind) for name, kind in METADATA_COLUMNS.items()},
        **{name: pa.nulls(rows, kind) for name, kind in VERSION_COLUMNS.items()},
        **{name: pa.nulls(rows, kind) for name, kind in PROVENANCE_COLUMNS.items()},
        VIEWS: pa.array([0 if i in errors else 3 for i in ids], pa.int32()),
        DECODE_SECONDS: pa.array([0.5] * rows),
        DECODED_ON_NVDEC: pa.array([False] * rows),
        INFERENCE_SECONDS: pa.array([0.25] * rows),
        BYTES_READ: pa.array([100] * rows, pa.int64()),
        INFERENCE_DEVICE: pa.array(['{"device": "cpu"}'] * rows),
        "split": pa.array([split] * rows),
    }
    return pa.table(columns)


def duckdb_ids(output: Output) -> list[str]:
    query = f"select video_id from read_parquet('{output.root}/**/*.parquet') order by 1"
    return [row[0] for row in duckdb.sql(query).fetchall()]


def write(output: Output, ids: list[str], run_id: str = "run1", **writer) -> list[str]:
    """Stage and commit `ids` as the job does; returns the committed files."""
    options = {"rows_per_file": 2, **writer}
    staged = FileWriter(output, run_id, output_schema(HIDDEN), **options)(labelled_rows(ids))
    files = []
    for row in staged.to_pylist():
        files += commit_staged(output, Unlocked(), row).files
    return files


def test_files_appear_only_when_committed(tmp_path):
    output = Output(str(tmp_path / "out"))
    writer = FileWriter(output, "run1", output_schema(HIDDEN), rows_per_file=2)
    staged = writer(labelled_rows(["c", "a", "b"], errors=("b",))).to_pylist()
    assert len(staged) == 2
    assert not list(Path(output.root).rglob("*.parquet"))  # staged files end in .tmp
    stats = [commit_staged(output, Unlocked(), row) for row in staged]
    assert [s.rows for s in stats] == [2, 1]
    assert sum((s.status for s in stats), Counter()) == {"ok": 2, "error": 1}
    assert (sum(s.clips for s in stats), sum(s.bytes_read for s in stats)) == (6, 300)
    assert stats[0].devices == ['{"device": "cpu"}']
    table = ds.dataset(output.root).to_table()
    assert table.column_names == output_schema(HIDDEN).names + ["split"]  # no "_" column
    assert sorted(table["video_id"].to_pylist()) == ["a", "b", "c"] == duckdb_ids(output)
    first = ds.dataset(stats[0].files[0]).to_table()["video_id"].to_pylist()
    assert first == ["a", "b"]  # sorted: a retried task cuts the same files


def test_partitions_become_folders_and_columns(tmp_path):
    output = Output(str(tmp_path / "out"))
    schema = output_schema(HIDDEN, ("run_date",))
    writer = FileWriter(output, "r", schema, 10, partition_values={"run_date": "2026-11-30"})
    for row in writer(labelled_rows(["a"])).to_pylist():
        commit_staged(output, Unlocked(), row)
    [file] = Path(output.root).rglob("*.parquet")
    assert file.parent.name == "run_date=2026-11-30"
    assert ds.dataset(output.root).to_table()["run_date"].to_pylist() == ["2026-11-30"]


def relabel(output: Output, ids: list[str], run_id: str, **writer) -> WriteStats:
    """Commit new rows of `ids` as a relabelling run does: in place of their committed rows."""
    partition_by = tuple(writer.get("partition_values", {}))
    relabelled = located(output, ids, partition_by)
    schema = output_schema(HIDDEN, partition_by)
    rows = labelled_rows(ids, split=run_id)  # the manifest column tells the runs apart
    staged = FileWriter(output, run_id, schema, rows_per_file=10, **writer)(rows)
    stats = WriteStats()
    for row in staged.to_pylist():
        stats.add(commit_staged(output, Unlocked(run_id), row, relabelled))
    return stats


def located(output: Output, ids: list[str], partition_by: tuple[str, ...]) -> Relabelled:
    """Where the committed rows of `ids` are, as a `--force` run finds them (`work`), the
    committed files read one by one."""
    files = output.data_files()
    schema = committed_schema(refresh_changed=False, segments=False)
    committed = pa.concat_tables(
        committed_side(output.file_rows(path, schema), holder) for holder, path in enumerate(files)
    )
    listed = pa.table({"video_id": ids, "uri": ids})
    rows = decide(listed.join(committed, "video_id", join_type="left outer"), "force", False)
    return relabelled([relabelled_holders(rows)], files, partition_by)


def run_of_each(output: Output) -> dict[str, str]:
    """Which run's row each video has (`relabel` tags them in the `split` column)."""
    table = ds.dataset(output.root, format="parquet").to_table(columns=["video_id", "split"])
    ids = table["video_id"].to_pylist()
    assert len(ids) == len(set(ids)), "a video twice"
    return dict(zip(ids, table["split"].to_pylist(), strict=True))


def test_relabelled_rows_take_the_place_of_the_old_ones_in_their_files(tmp_path):
    """New rows of committed videos go into the files that hold their old rows (each replaced
    whole, under its name); the videos that had no row get a file of their own."""
    output = Output(str(tmp_path / "out"))
    files = write(output, ["a", "b", "c"])
    before = {f: Path(f).stat().st_ino for f in files}
    stats = relabel(output, ["a", "c", "x"], "new")
    assert run_of_each(output) == {"a": "new", "b": "train", "c": "new", "x": "new"}
    assert stats.rows_replaced == 2
    assert sorted(stats.files) == sorted(files + [f for f in stats.files if "part-new-" in f])
    assert [f for f in stats.files if "part-new-" in f] != []  # x's file
    assert all(Path(f).stat().st_ino != before[f] for f in files)  # replaced, same names
    assert sorted(duckdb_ids(output)) == ["a", "b", "c", "x"]
    assert not list(Path(output.path("_tmp", "new")).glob("*"))  # nothing left staged


def test_relabelled_rows_keep_the_partition_of_the_file_they_move_into(tmp_path):
    output = Output(str(tmp_path / "out"))
    schema = output_schema(HIDDEN, ("run_date",))
    old = FileWriter(output, "old", schema, 10, partition_values={"run_date": "2026-11-30"})
    for row in old(labelled_rows(["a"])).to_pylist():
        commit_staged(output, Unlocked(), row)
    relabel(output, ["a", "b"], "new", partition_values={"run_date": "2026-12-06"})
    table = ds.dataset(output.root, format="parquet").to_table()
    dates = dict(zip(table["video_id"].to_pylist(), table["run_date"].to_pylist(), strict=True))
    assert dates == {"a": "2026-11-30", "b": "2026-12-06"}
    assert run_of_each(output) == {"a": "new", "b": "new"}


def test_an_archived_version_is_out_of_every_readers_glob(tmp_path):
    output = Output(str(tmp_path / "out"))
    write(output, ["a", "b", "c"])
    identity = {"weights_sha256": "ab" * 32, "partition_by": []}
    output.write_identity(identity, Unlocked())
    archive = Path(output.archive(identity, Unlocked()))
    assert output.read_identity() is None
    assert not list(Path(output.root).rglob("*.parquet"))  # what DuckDB's glob reads
    assert ds.dataset(output.root, format="parquet").count_rows() == 0
    assert json.loads((archive / "_dataset.json").read_text()) == identity
    archived = ds.dataset(archive, format="parquet").to_table()
    assert sorted(archived["video_id"].to_pylist()) == ["a", "b", "c"]


def test_versions_archived_by_older_releases_are_hidden(tmp_path):
    output = Output(str(tmp_path / "out"))
    old = Path(output.path("_versions", "old", "part-x.parquet"))
    old.parent.mkdir(parents=True)
    Output(str(old.parent)).create()
    write(Output(str(old.parent)), ["a"], run_id="x")
    write(output, ["a"])
    assert duckdb_ids(output) == ["a", "a"]  # what 0.1 outputs gave DuckDB
    assert output.hide_legacy_archives(Unlocked()) == 1
    assert duckdb_ids(output) == ["a"]


def test_a_run_writer_changes_the_output_only_from_its_first_commit(tmp_path):
    """Staging touches nothing readers see; the first commit writes the identity (and clears
    what dead runs staged) before the file; `finish` writes the report and clears the run's
    own staging."""
    output = Output(str(tmp_path / "out"))
    output.stage(b"left by a dead run", "dead-run", "part-x.parquet")
    files = FileWriter(output, "run1", output_schema(HIDDEN), rows_per_file=10)
    nothing = Relabelled.none()
    writer = RunWriter(output, Unlocked("run1"), files, {"weights_sha256": "ab" * 32}, nothing)
    [staged] = files(labelled_rows(["a", "b"])).to_pylist()
    assert output.read_identity() is None and not output.data_files()
    writer.commit(staged)
    assert output.read_identity() == {"weights_sha256": "ab" * 32}
    assert duckdb_ids(output) == ["a", "b"] and writer.stats.videos == 2
    assert not Path(output.path("_tmp", "dead-run")).exists()
    writer.finish(RunReport(run_id="run1", rows_written=writer.stats.rows))
    assert [r.rows_written for r in output.read_reports()] == [2]
    assert not Path(output.path("_tmp", "run1")).exists()


def test_each_run_clears_its_own_staging_and_the_holder_what_dead_runs_left(tmp_path):
    output = Output(str(tmp_path / "out"))
    output.stage(b"never committed", "dead-run", "part-x.parquet")
    output.stage(b"staged now", "holder", "part-y.parquet")
    output.clear_staging("another")  # a run clears its own folder only
    assert len(list(Path(output.path("_tmp")).rglob("*.tmp"))) == 2
    assert output.clear_dead_staging(Unlocked("holder")) == 1
    assert [p.parent.name for p in Path(output.path("_tmp")).rglob("*.tmp")] == ["holder"]
    output.clear_staging("holder")
    assert not list(Path(output.path("_tmp")).iterdir())


def test_run_reports_round_trip_and_older_reports_read(tmp_path):
    output = Output(str(tmp_path / "out"))
    report = RunReport(
        run_id="r1",
        rows_written=3,
        error_budget=ErrorBudget(
            manifest_rows=4, errors_this_run=1, errors_kept=1, max_error_fraction=0.4
        ),
    )
    output.write_report(report, Unlocked())
    [read] = output.read_reports()
    assert read == report
    assert (read.error_budget.error_fraction, read.error_budget.exceeded) == (0.5, True)
    saved = json.loads(Path(output.path("_runs", "r1.json")).read_text())
    assert saved["error_budget"]["error_fraction"] == 0.5
    older = {"run_id": "r0", "rows_written": 2, "throughput": {"clips": 2}, "gone_key": 1}
    Path(output.path("_runs", "r0.json")).write_text(json.dumps(older))
    first = output.read_reports()[0]
    assert (first.run_id, first.rows_written, first.throughput.clips) == ("r0", 2, 2)


@pytest.mark.parametrize(
    "budget, exceeded",
    [
        (ErrorBudget(10, errors_this_run=0, errors_kept=1, max_error_fraction=0.05), True),
        (ErrorBudget(100, errors_this_run=5, errors_kept=0, max_error_fraction=0.05), False),
        (ErrorBudget(0, max_error_fraction=0.0), False),
    ],
)
def test_the_error_budget_counts_kept_error_rows(budget, exceeded):
    assert budget.exceeded is exceeded


def test_report_summarises_rows_runs_and_devices(tmp_path):
    output = Output(str(tmp_path / "out"))
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())  # what `report` asks for
    write(output, ["a", "b", "c"])
    device = {"node": "n1", "device": "cpu", "name": "EPYC", "memory_gib": None, "threads": 2}
    device |= {"precision": "fp32", "torch": "2.13.0", "cuda": None}
    warning = "model.precision=bf16 is autocast on CUDA only"
    report = RunReport(
        run_id="r1",
        rows_written=3,
        counts={"status": {"ok": 3}, "error_code": {}},
        inference_devices=[device, {**device, "node": "n2"}],
        warnings=[warning, warning],
        config={"output": {"uri": output.uri}},
    )
    output.write_report(report, Unlocked())
    summary = summary_text(output_stats(output.uri))
    assert f"{output.uri}: 3 rows" in summary and "status: {'ok': 3}" in summary
    assert "    r1: 3 rows" in summary
    assert "inference: 1 actor(s) on cpu EPYC, 2 threads, fp32" in summary  # one per node
    assert summary.count(f"warning: {warning}") == 1
    printed = run_summary(report)
    assert "run r1: 3 rows" in printed and output.report_uri("r1") in printed


def test_rows_wait_for_a_file_at_most_commit_every_s():
    """`file_rows` lets out a file's worth at `rows_per_file` rows, or once the oldest rows held
    have waited `commit_every_s`, or at the end (the clock: seconds as the batches come in)."""
    arrivals = [(0, 3), (30, 3), (61, 2), (62, 5), (70, 6), (80, 1)]  # (second, rows)
    now = 0.0

    def completed():
        nonlocal now
        for second, rows in arrivals:
            now = second
            yield [pa.table({"video_id": [f"{second}-{i}" for i in range(rows)]})]

    files = file_rows(completed(), 10, max_held_bytes=2**30, commit_every_s=60, clock=lambda: now)
    assert [table.num_rows for table in files] == [8, 11, 1]
    held = file_rows(completed(), 10, max_held_bytes=1, commit_every_s=60, clock=lambda: now)
    assert [table.num_rows for table in held] == [3, 3, 2, 5, 6, 1]  # past the bytes at once


@pytest.mark.parametrize(
    "stop",
    [Interrupted(signal.SIGTERM), OSError("the object store went away")],
    ids=["signal", "failure"],
)
def test_rows_held_when_the_pipeline_stops_come_out_before_it_raises(stop):
    """A stop signal's `Interrupted` or a failure from the pipeline: `file_rows` lets out the
    whole videos it holds as a file (the run commits it), then raises the same; what came in
    is counted into `labelled` as it comes."""

    def completed():
        yield [labelled_rows(["a", "b"], errors=("b",))]
        yield [labelled_rows(["c"])]
        raise stop

    labelled = WriteStats()
    files = file_rows(completed(), 100, 2**30, commit_every_s=3600, labelled=labelled)
    assert next(files)["video_id"].to_pylist() == ["a", "b", "c"]
    with pytest.raises(type(stop)) as raised:
        next(files)
    assert raised.value is stop
    assert (labelled.videos, labelled.clips, labelled.status) == (3, 6, {"ok": 2, "error": 1})


def test_a_pipelines_failure_is_logged_where_committing_the_rows_held_fails_too(caplog):
    """The run ends with the commit's error (a full disk); the pipeline's, which came first,
    is logged before it rather than lost."""

    def completed():
        yield [labelled_rows(["a", "b"])]
        raise ConnectionResetError("the object store went away")

    files = file_rows(completed(), 100, 2**30, commit_every_s=3600)
    assert next(files).num_rows == 2
    files.close()  # as `write_rows` does when the commit raises
    assert caplog.messages == [
        "the pipeline failed (ConnectionResetError: the object store went away); committing "
        "the 2 rows it held failed too:"
    ]


def test_a_lost_lock_lets_out_none_of_the_rows_held():
    """The lost lock's interrupt (a plain KeyboardInterrupt): nothing more may be committed, so
    the rows held stay in."""

    def completed():
        yield [labelled_rows(["a"])]
        raise KeyboardInterrupt

    files = file_rows(completed(), 100, 2**30, commit_every_s=3600)
    with pytest.raises(KeyboardInterrupt):
        next(files)
