"""`vivit-batch compact` and `output.compact_after_files`: small files merged and empty ones
dropped under the output's lock, with every video exactly once for readers throughout (local
folders swapped whole), merges file by file only `--offline` (S3, unpartitioned), and a
compaction killed at any point finished by the next holder of the lock. No Ray."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.helpers.locks import ROOT
from tests.helpers.outputs import HIDDEN, START, commit_run, new_output, rows_of
from vivit_batch.cli import main
from vivit_batch.config import OutputSection, StorageSection
from vivit_batch.errors import EXIT_OK, EXIT_TIME_LIMIT, EXIT_USAGE
from vivit_batch.output import Output, RunWriter, Unlocked, output_schema, parquet_bytes
from vivit_batch.output.compaction import TEST_STOP, plan
from vivit_batch.output.exchange import ExchangeUnsupported, exchange, system_call
from vivit_batch.output.sink import NOTHING_RELABELLED, FileWriter
from vivit_batch.storage import storage_options

NIGHTS = 4
"""Runs per day in `build`; each commits its videos in files of 3 rows (as `commit_run`)."""


def build(output: Output, days: int, videos: int = 5, partitioned: bool = True) -> list[str]:
    """`days` x `NIGHTS` runs of `videos` new videos each; returns the video ids."""
    ids = []
    for day in range(days):
        for night in range(NIGHTS):
            new = [f"d{day:02d}-n{night}-v{i:02d}" for i in range(videos)]
            started = START + timedelta(days=day, hours=night)
            commit_run(output, f"night-{day:02d}-{night}", new, started, partitioned)
            ids += new
    return ids


def rows(uri: str) -> list[dict]:
    """Every row as pyarrow reads the output with no options, by video."""
    table = ds.dataset(uri, format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda row: row["video_id"])


def data_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def compact(output: Output | str, *options: str) -> int:
    uri = output if isinstance(output, str) else output.uri
    return main(["compact", uri, *options])


def test_the_plan_merges_small_files_in_path_order_and_drops_empty_ones(tmp_path):
    output = new_output(tmp_path / "out")
    build(output, days=2)  # each run: files of 3 and 2 rows
    folder = output.path("run_date=2026-11-30")
    empty = pa.table({"video_id": pa.array([], pa.string())})
    output.write(f"{folder}/part-withdrawn.parquet", parquet_bytes(empty), Unlocked(), "e")

    planned = plan(output, rows_per_file=8)

    assert [f.name for f in planned.folders] == ["run_date=2026-11-30", "run_date=2026-12-01"]
    first = planned.folders[0]
    assert [Path(f.path).name for f in first.empty] == ["part-withdrawn.parquet"]
    assert [[f.rows for f in merge] for merge in first.merges] == [[2, 3, 2], [3, 2, 3], [2, 3]]
    merged = [f.path for merge in first.merges for f in merge]
    assert merged == sorted(merged)  # in path order, so by run
    assert (len(first.files), first.files_after) == (9, 3)
    assert planned.folders[1].files_after == 3 and not planned.folders[1].empty
    assert not plan(output, rows_per_file=3).folders[1].merges  # 3 + 2 does not fit in 3


def test_compaction_keeps_every_row_and_every_reader_reads_the_same_rows(tmp_path, capsys):
    out = tmp_path / "out"
    output = new_output(out)
    ids = build(output, days=2)
    before = rows(str(out))
    schema = pq.read_schema(data_files(out)[0])
    old_files = data_files(out)

    assert compact(output, "--set", "output.rows_per_file=10") == EXIT_OK

    printed = capsys.readouterr().out
    assert "run_date=2026-11-30: 8 files -> 2\n" in printed
    assert f"compacted {out}: 16 -> 4 data files in 2 folder(s)" in printed
    files = data_files(out)
    assert len(files) == 4 and not set(files) & set(old_files)  # fresh names
    assert all(pq.read_metadata(f).num_rows == 10 for f in files)
    assert all(pq.read_schema(f).equals(schema) for f in files)  # the output's columns, typed
    assert rows(str(out)) == before  # every row as it was, run_date included
    frame = pd.read_parquet(out).sort_values("video_id")
    assert frame.video_id.tolist() == ids and frame.run_date.astype(str).nunique() == 2
    query = f"select video_id, run_date, label from read_parquet('{out}/**/*.parquet')"
    found = sorted(duckdb.sql(query).fetchall())
    assert found == [
        (r["video_id"], pd.Timestamp(r["run_date"]).date(), r["label"]) for r in before
    ]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["out"] and not list((out / "_tmp").iterdir())  # nothing staged is left

    assert compact(output, "--rows-per-file", "10") == EXIT_OK
    assert "nothing to compact in" in capsys.readouterr().out and data_files(out) == files


def test_a_reader_polling_during_compaction_sees_every_video_once(tmp_path):
    """pyarrow and DuckDB each look every 0.1 s while 12 partition folders are compacted: a
    look that fails to open a file it listed (merged away meanwhile) looks again."""
    out = tmp_path / "out"
    output = new_output(out)
    ids = sorted(build(output, days=12, videos=8))
    looks: list[tuple[str, list[str], int]] = []
    retries = []
    done = threading.Event()

    def poll() -> None:
        connection = duckdb.connect()
        query = f"select video_id, filename from read_parquet('{out}/**/*.parquet', filename=1)"
        while not done.wait(0.1):
            for reader in ("pyarrow", "duckdb"):
                try:
                    if reader == "pyarrow":
                        dataset = ds.dataset(out, format="parquet")
                        seen = dataset.to_table(columns=["video_id"])["video_id"].to_pylist()
                        files = len(dataset.files)
                    else:
                        found = connection.sql(query).fetchall()
                        seen, files = [v for v, _ in found], len({f for _, f in found})
                except (FileNotFoundError, duckdb.IOException) as error:
                    retries.append(error)
                    continue
                looks.append((reader, sorted(seen), files))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        time.sleep(0.3)
        assert compact(output, "--rows-per-file", "16") == EXIT_OK
        time.sleep(0.3)
    finally:
        done.set()
        reader.join()

    assert {reader for reader, _, _ in looks} == {"pyarrow", "duckdb"}
    wrong = [(reader, len(seen), files) for reader, seen, files in looks if seen != ids]
    assert not wrong, wrong
    counts = [files for _, _, files in looks]
    assert max(counts) == 12 * NIGHTS * 3 and min(counts) == 12 * 2
    assert any(12 * 2 < files < 12 * NIGHTS * 3 for files in counts), counts  # looks midway


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in [root, *root.rglob("*")]}


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    build(new_output(out), days=1)
    before = snapshot(tmp_path)

    assert compact(str(out), "--dry-run", "--rows-per-file", "10") == EXIT_OK

    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "run_date=2026-11-30: 8 files -> 2"
    assert printed[1].startswith("  merge part-night-00-0-") and printed[1].endswith(
        "-> one file of 10 rows"
    )
    assert printed[-1] == (
        f"dry run, nothing changed; would compact {out}: 8 -> 2 data files in 1 folder(s) "
        "(merged files of at most 10 rows)"
    )
    assert snapshot(tmp_path) == before  # no lock taken, nothing staged, no mtime changed


def test_an_unpartitioned_output_is_compacted_only_offline(tmp_path, capsys):
    out = tmp_path / "out"
    output = new_output(out)
    build(output, days=1, partitioned=False)
    before = rows(str(out))
    files = data_files(out)

    assert compact(output, "--rows-per-file", "10") == EXIT_USAGE
    error = capsys.readouterr().err
    assert "the files at the root of an unpartitioned output cannot be swapped" in error
    assert "a reader could see a merge's rows twice" in error and "--offline" in error
    assert data_files(out) == files and not list((out / "_tmp").iterdir())

    assert compact(output, "--rows-per-file", "10", "--offline") == EXIT_OK
    assert len(data_files(out)) == 2 and rows(str(out)) == before
    assert not list((out / "_tmp").iterdir())


def test_where_folders_cannot_be_swapped_compaction_changes_nothing(tmp_path, capsys):
    """The output's `_tmp/` on another filesystem (tmpfs): the exchange that probes for the
    swap fails as it does for an output that is itself a mount point (EXDEV)."""
    out = tmp_path / "out"
    output = new_output(out)
    build(output, days=1)
    files = data_files(out)
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    shutil.rmtree(out / "_tmp")
    (out / "_tmp").symlink_to(elsewhere)
    try:
        assert compact(output, "--rows-per-file", "10") == EXIT_USAGE
        error = capsys.readouterr().err
        assert "its folders cannot be swapped atomically here (the two folders are on " in error
        assert "Pass --offline if nothing reads the output while it runs" in error
        assert data_files(out) == files and not list(elsewhere.iterdir())
        assert not (tmp_path / ".out._swap").exists()
    finally:
        shutil.rmtree(elsewhere)


def test_a_held_lock_is_exit_2_and_nothing_changes(tmp_path, capsys):
    out = tmp_path / "out"
    output = new_output(out)
    build(output, days=1)
    files = data_files(out)
    with output.lock("nightly", 30.0):
        assert compact(output, "--set", "run.lock_wait_s=0.2") == EXIT_USAGE
    assert "is being written by run nightly" in capsys.readouterr().err
    assert data_files(out) == files


def start_compaction(uri: str, stop: str, *options: str) -> subprocess.Popen:
    """`vivit-batch compact URI` in its own process, which stops itself (SIGSTOP) at `stop`
    (`TEST_STOP`); returns once it has."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vivit_batch.cli", "compact", uri, "--rows-per-file", "10"]
        + ["--set", "run.lock_stale_after_s=2", *options],
        cwd=ROOT,
        env={**os.environ, TEST_STOP: stop},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the compaction never reached its stop"
        time.sleep(0.02)
    return process


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stderr.close()


@pytest.mark.parametrize("stop", ["rebuilt", "swapped"])
def test_a_compaction_killed_midway_leaves_each_video_once_and_the_next_one_finishes(
    tmp_path, stop
):
    out = tmp_path / "out"
    output = new_output(out)
    build(output, days=2)
    before = rows(str(out))
    swap = tmp_path / ".out._swap"

    process = start_compaction(str(out), stop)
    assert [p.name for p in swap.iterdir()] != []  # the killed run's rebuilt folder is there
    kill(process)

    assert rows(str(out)) == before  # readable, every video once
    assert len(data_files(out)) == (16 if stop == "rebuilt" else 10)  # 8 -> 2 in one folder
    assert compact(output, "--rows-per-file", "10") == EXIT_OK
    assert rows(str(out)) == before and len(data_files(out)) == 4
    assert not swap.exists() and not list((out / "_tmp").iterdir())


def test_a_compaction_stops_at_its_time_limit_leaving_each_video_once(tmp_path):
    """`run.time_limit_s` passes while the compaction is frozen midway: it stops as on SIGTERM
    (exit 124) and the next compaction finishes the work."""
    out = tmp_path / "out"
    build(new_output(out), days=2)
    before = rows(str(out))
    process = start_compaction(str(out), "rebuilt", "--set", "run.time_limit_s=1")
    time.sleep(1)  # its timer started before it froze: it has passed by now
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=60) == EXIT_TIME_LIMIT
    printed = process.stderr.read().decode()
    process.stderr.close()
    assert "run.time_limit_s=1s: the compaction stops at " in printed
    assert "compact: stopped by run.time_limit_s" in printed and "Traceback" not in printed
    assert rows(str(out)) == before
    assert compact(str(out), "--rows-per-file", "10") == EXIT_OK
    assert rows(str(out)) == before and len(data_files(out)) == 4


def s3_output(s3_server) -> tuple[Output, list[str]]:
    bucket = f"compact-{uuid.uuid4().hex[:12]}"
    s3_server.filesystem().mkdir(bucket)
    options = storage_options(StorageSection(endpoint_url=s3_server.endpoint_url))
    output = Output(f"s3://{bucket}/out", options)
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    return output, ["--set", f"storage.endpoint_url={s3_server.endpoint_url}"]


def objects(output: Output) -> list[str]:
    return sorted(output.filesystem.find(output.root))


def test_on_s3_merges_need_offline_and_one_killed_midway_is_finished_by_the_next_holder(
    s3_server, capsys
):
    output, endpoint = s3_output(s3_server)
    build(output, days=1)
    before, listed = s3_rows(output), objects(output)

    assert compact(output, "--rows-per-file", "10", *endpoint) == EXIT_USAGE
    assert "on S3 no folder can be swapped atomically" in capsys.readouterr().err
    assert [o for o in objects(output) if "/_lock" not in o] == listed

    kill(start_compaction(output.uri, "merged", "--offline", *endpoint))
    assert len(s3_rows(output)) == 20 + 10  # the merged file and its sources, until finished
    [record] = output.filesystem.glob(output.path("_tmp", "*", "merges", "*.json"))

    with output.lock("next-holder", 2.0) as lock:  # what every run does before its commits
        output.clear_dead_staging(lock)
    assert s3_rows(output) == before and not output.filesystem.exists(record)
    assert len(output.data_files()) == 8 - 4 + 1

    assert compact(output, "--rows-per-file", "10", "--offline", *endpoint) == EXIT_OK
    assert s3_rows(output) == before and len(output.data_files()) == 2


def s3_rows(output: Output) -> list[dict]:
    table = output.dataset().to_table(columns=["video_id", "run_id", "label"])
    return sorted(table.to_pylist(), key=lambda row: row["video_id"])


def test_a_run_compacts_its_folder_when_it_holds_more_than_compact_after_files(tmp_path):
    output = new_output(tmp_path / "out")
    build(output, days=1)  # 8 files of 3 and 2 rows
    writer = tonights_run(output, {"run_date": "2026-11-30"})  # 2 more
    before = rows(output.uri)

    writer.compact(OutputSection(rows_per_file=10, compact_after_files=10))
    assert len(data_files(tmp_path / "out")) == 10  # 10 small files: not more than 10
    writer.compact(OutputSection(rows_per_file=10, compact_after_files=9))
    files = data_files(tmp_path / "out")
    assert sorted(pq.read_metadata(f).num_rows for f in files) == [5, 10, 10]
    assert {f.parent.name for f in files} == {"run_date=2026-11-30"}
    assert all(f.name.startswith("part-tonight-") for f in files)
    assert rows(output.uri) == before


def test_a_run_leaves_an_unpartitioned_output_alone_unless_compact_offline(tmp_path, caplog):
    output = new_output(tmp_path / "out")
    build(output, days=1, partitioned=False)
    writer = tonights_run(output, {})

    writer.compact(OutputSection(rows_per_file=10, compact_after_files=1))
    assert len(data_files(tmp_path / "out")) == 10
    assert "(root) not compacted: the files at the root of an unpartitioned" in caplog.text
    assert "set output.compact_offline=true" in caplog.text.lower()

    writer.compact(OutputSection(rows_per_file=10, compact_after_files=1, compact_offline=True))
    assert len(data_files(tmp_path / "out")) == 3


def tonights_run(output: Output, partitions: dict[str, str]) -> RunWriter:
    """The writer of a run that has committed five new videos (files of 3 and 2 rows) into the
    folder of `partitions`, as `run_job` does before it compacts."""
    files = FileWriter(output, "tonight", output_schema(HIDDEN, tuple(partitions)), 3, partitions)
    identity = output.read_identity() or {}
    writer = RunWriter(output, Unlocked("tonight"), files, identity, NOTHING_RELABELLED)
    for staged in files(rows_of("tonight", [f"t{i}" for i in range(5)], START)).to_pylist():
        writer.commit(staged)
    return writer


def test_exchange_swaps_two_folders_and_says_when_the_filesystem_cannot(tmp_path):
    for name, content in (("a", "in a"), ("b", "in b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text(content)
    exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a" / "file").read_text() == "in b"
    renameat2 = system_call(ctypes.CDLL(None, use_errno=True))  # where libc has no wrapper
    assert renameat2 is not None
    assert renameat2(-100, bytes(tmp_path / "a"), -100, bytes(tmp_path / "b"), 2) == 0
    assert (tmp_path / "a" / "file").read_text() == "in a"

    other = Path("/dev/shm") / f"vivit-batch-{tmp_path.name}"
    other.mkdir()
    try:
        with pytest.raises(ExchangeUnsupported, match="on different filesystems"):
            exchange(str(tmp_path / "a"), str(other))
    finally:
        other.rmdir()
