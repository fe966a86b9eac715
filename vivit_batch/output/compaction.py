"""Compaction: an output's small data files merged, its empty ones dropped, under its lock.

`plan` looks at each data folder (a `run_date=` partition, or the root of an unpartitioned
output) and its files' row counts, read from their Parquet footers only: files with no rows are
dropped; of the others, those below `rows_per_file` rows are taken in path order (so by run)
and each run of consecutive ones that fits in `rows_per_file` rows becomes one new file
`part-<run_id>-<digest>.parquet` (a video's rows stay in one file: whole files are merged).

`compact` applies a plan through the output's fenced operations, in one of two ways:

- a folder below the root of a local output is rebuilt beside the output (its other files hard
  links, the merged files new) and swapped in with one atomic exchange (`Output.swap_folder`):
  a reader lists the old folder or the new one, so it sees every video exactly once; a reader
  that listed the old folder and opens its files after the swap fails to open a merged-away
  one (the new files have fresh names) and reads again, rather than mixing the two;
- where no folder can be swapped atomically (S3; the files at the root of an output; a
  filesystem or kernel without `RENAME_EXCHANGE`), merge by merge: the intent is recorded under
  the run's `_tmp/<run_id>/merges/`, the merged file committed, then its sources deleted (one
  request on S3). Between the commit and the delete a reader can see the merge's rows twice, so
  this needs `offline` (nothing reads the output meanwhile); a merge stopped halfway is
  finished by the next holder of the lock (`Output.finish_merges`). Dropping empty files needs
  no such care: it changes no row a reader sees.
"""

from __future__ import annotations

import logging
import os
import posixpath
import signal
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from vivit_batch.config import JobConfig, OutputSection
from vivit_batch.errors import ConfigError
from vivit_batch.output.dataset import (
    Fence,
    Output,
    Unlocked,
    parquet_bytes,
    require_relabel_finished,
)
from vivit_batch.output.lock import OutputLock
from vivit_batch.output.runs import new_run_id
from vivit_batch.output.sink import file_name
from vivit_batch.storage import job_storage_options

log = logging.getLogger("vivit_batch")

TEST_STOP = "VIVIT_BATCH_TEST_COMPACTION_STOP"
"""Test builds only, never set in production: `rebuilt` (a folder rebuilt, not yet swapped
in), `swapped` (swapped in, the old folder not yet removed) or `merged` (a merged file
committed, its sources not yet deleted) in the environment makes compaction stop its own
process (SIGSTOP) there, so that tests can kill it at that very point."""


@dataclass(frozen=True)
class DataFile:
    path: str
    rows: int


@dataclass(frozen=True)
class FolderPlan:
    """What compaction does in one data folder."""

    folder: str
    name: str
    """as shown: the folder relative to the output, or (root)"""
    files: tuple[DataFile, ...]
    """every data file there, in path order"""
    merges: tuple[tuple[DataFile, ...], ...]
    """each: the files (two or more) whose rows become one new file"""
    empty: tuple[DataFile, ...]
    """files with no rows, dropped"""
    swappable: bool
    """a folder of a local output below its root, which can be rebuilt and swapped in whole
    where the filesystem can exchange folders"""

    @property
    def changes(self) -> bool:
        return bool(self.merges or self.empty)

    @property
    def files_after(self) -> int:
        merged = sum(len(merge) for merge in self.merges)
        return len(self.files) - merged + len(self.merges) - len(self.empty)

    def small(self, rows_per_file: int) -> int:
        """How many of its files hold fewer than `rows_per_file` rows."""
        return sum(file.rows < rows_per_file for file in self.files)


@dataclass(frozen=True)
class Plan:
    output: str
    """the output's URI"""
    rows_per_file: int
    folders: tuple[FolderPlan, ...]


def plan(output: Output, rows_per_file: int, folder: str | None = None) -> Plan:
    """What compaction would do in each data folder of `output` (only in `folder` if given),
    from the listing and the files' Parquet footers."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in output.data_files(folder):
        by_folder[posixpath.dirname(path)].append(path)
    folders = tuple(
        plan_folder(output, name, paths, rows_per_file) for name, paths in sorted(by_folder.items())
    )
    return Plan(output.uri, rows_per_file, folders)


def plan_folder(output: Output, folder: str, paths: list[str], rows_per_file: int) -> FolderPlan:
    files = tuple(DataFile(path, rows_in(output, path)) for path in sorted(paths))
    small = [file for file in files if 0 < file.rows < rows_per_file]
    return FolderPlan(
        folder=folder,
        name="(root)" if folder == output.root else posixpath.relpath(folder, output.root),
        files=files,
        merges=tuple(group for group in consecutive_groups(small, rows_per_file) if len(group) > 1),
        empty=tuple(file for file in files if file.rows == 0),
        swappable=output.is_local and folder != output.root,
    )


def rows_in(output: Output, path: str) -> int:
    return pq.read_metadata(path, filesystem=output.filesystem).num_rows


def consecutive_groups(files: list[DataFile], rows_per_file: int) -> list[tuple[DataFile, ...]]:
    """`files` cut, in their order, into groups of at most `rows_per_file` rows: each group
    takes the next file while it fits."""
    groups: list[list[DataFile]] = []
    rows = 0
    for file in files:
        if groups and rows + file.rows <= rows_per_file:
            groups[-1].append(file)
            rows += file.rows
        else:
            groups.append([file])
            rows = file.rows
    return [tuple(group) for group in groups]


def compact_output(
    uri: str,
    config: JobConfig,
    rows_per_file: int | None = None,
    *,
    dry_run: bool = False,
    offline: bool = False,
) -> Plan:
    """`vivit-batch compact`: plan, and unless `dry_run` apply, under the output's lock (taken,
    waited for and fenced as a run's: `config`'s run and storage sections apply). Returns the
    plan. `ConfigError` (exit code 2), nothing changed, where a merge would need `offline`."""
    output = Output.existing(uri, job_storage_options(config))
    rows_per_file = rows_per_file or config.output.rows_per_file
    if dry_run:
        return plan(output, rows_per_file)
    run = config.run
    run_id = run.run_id or new_run_id()
    lock: OutputLock | Unlocked = (
        Unlocked(run_id)
        if run.locking == "none"
        else output.lock(run_id, run.lock_stale_after_s, run.lock_wait_s)
    )
    with lock:
        try:
            require_relabel_finished(output.read_identity(), uri, "compaction")
            output.clear_dead_staging(lock)
            planned = plan(output, rows_per_file)
            swap = swap_problem(output, planned, run_id)
            unsafe = needs_offline(output, planned, swap)
            if unsafe and not offline:
                raise ConfigError(f"output {uri}: {unsafe}; {OFFLINE}")
            compact(output, planned, lock, swap is None)
        finally:
            output.clear_staging(run_id)
    return planned


OFFLINE = (
    "merging file by file instead, a reader could see a merge's rows twice while its sources "
    "are deleted. Pass --offline if nothing reads the output while it runs"
)


def swap_problem(output: Output, planned: Plan, run_id: str) -> str | None:
    """Why the folders of `planned` that could be swapped whole cannot be here (None: they
    can, or none of them has merges): the filesystem's exchange is tried only where needed."""
    if not any(folder.swappable and folder.merges for folder in planned.folders):
        return None
    return output.swap_unsupported(run_id)


def needs_offline(output: Output, planned: Plan, swap_problem: str | None) -> str | None:
    """Why some merges of `planned` can only be made file by file (None: none)."""
    merging = [folder for folder in planned.folders if folder.merges]
    if output.is_s3 and merging:
        return "on S3 no folder can be swapped atomically"
    if any(not folder.swappable for folder in merging):
        return "the files at the root of an unpartitioned output cannot be swapped as a folder"
    if swap_problem is not None:
        return f"its folders cannot be swapped atomically here ({swap_problem})"
    return None


def compact(output: Output, planned: Plan, lock: Fence, swap: bool) -> None:
    """Apply `planned`: each folder that can be swapped whole so, where `swap` says this
    filesystem can (`swap_problem`); the others merge by merge."""
    for folder in planned.folders:
        if not folder.changes:
            continue
        if folder.swappable and swap:
            swap_in(output, folder, lock)
        else:
            merge_in_place(output, folder, lock)


def swap_in(output: Output, folder: FolderPlan, lock: Fence) -> None:
    """Rebuild `folder` beside the output with its merges made and empty files dropped, and
    swap it in (`Output.rebuild_folder`, `Output.swap_folder`)."""
    dropped = {posixpath.basename(file.path) for file in folder.empty}
    dropped |= {posixpath.basename(file.path) for merge in folder.merges for file in merge}
    merged = (merged_file(output, merge, lock.run_id) for merge in folder.merges)
    rebuilt = output.rebuild_folder(folder.folder, dropped, merged, lock.run_id)
    stop_here_in_tests("rebuilt")
    output.swap_folder(rebuilt, folder.folder, lock)
    stop_here_in_tests("swapped")


def merge_in_place(output: Output, folder: FolderPlan, lock: Fence) -> None:
    """Drop `folder`'s empty files, then make each merge: recorded, the merged file committed,
    its sources deleted."""
    if folder.empty:
        output.delete([file.path for file in folder.empty], lock)
    for merge in folder.merges:
        name, data = merged_file(output, merge, lock.run_id)
        final = posixpath.join(folder.folder, name)
        sources = [file.path for file in merge]
        record = output.record_merge(lock.run_id, sources, final)
        output.write(final, data, lock, stage_as=name)
        stop_here_in_tests("merged")
        output.delete(sources, lock)
        output.filesystem.rm_file(record)


def merged_file(output: Output, merge: tuple[DataFile, ...], run_id: str) -> tuple[str, bytes]:
    """The name and bytes of the file holding the rows of `merge`'s files: their columns (a
    column some lack is null there), each row as it was, its partition values included."""
    tables = [pq.read_table(file.path, filesystem=output.filesystem) for file in merge]
    rows = pa.concat_tables(tables, promote_options="permissive")
    return file_name(run_id, rows["video_id"]), parquet_bytes(rows)


def compact_after_run(output: Output, lock: Fence, section: OutputSection, folder: str) -> None:
    """`output.compact_after_files`: compact `folder`, where a run committed its files, when
    it holds more than that many small files. Where that needs merging file by file
    (`needs_offline`) and `output.compact_offline` is not set, only a warning says so."""
    if not section.compact_after_files:
        return
    rows_per_file = section.rows_per_file
    planned = plan(output, rows_per_file, folder)
    crowded = [f for f in planned.folders if f.small(rows_per_file) > section.compact_after_files]
    if not crowded:
        return
    planned = Plan(planned.output, rows_per_file, tuple(crowded))
    swap = swap_problem(output, planned, lock.run_id)
    unsafe = needs_offline(output, planned, swap)
    if unsafe and not section.compact_offline:
        log.warning(
            "output.compact_after_files: %s not compacted: %s. Set output.compact_offline=true "
            "if nothing reads the output during runs, or run `vivit-batch compact %s --offline` "
            "when nothing does",
            crowded[0].name,
            unsafe,
            output.uri,
        )
        return
    compact(output, planned, lock, swap is None)
    for line in compaction_summary(planned).splitlines():
        log.info(line)


def stop_here_in_tests(point: str) -> None:
    if os.environ.get(TEST_STOP) == point:
        os.kill(os.getpid(), signal.SIGSTOP)


def compaction_summary(planned: Plan, dry_run: bool = False) -> str:
    """Per folder: its files before and after, and what merges into what; then the totals."""
    lines = []
    for folder in planned.folders:
        by_file = " (merged file by file: needs --offline)" if dry_run and folder.merges else ""
        by_file = by_file if not folder.swappable else ""
        lines.append(f"{folder.name}: {len(folder.files)} files -> {folder.files_after}{by_file}")
        lines += [f"  merge {describe(merge)}" for merge in folder.merges]
        lines += [f"  drop {posixpath.basename(file.path)} (no rows)" for file in folder.empty]
    before = sum(len(folder.files) for folder in planned.folders)
    after = sum(folder.files_after for folder in planned.folders)
    done = "dry run, nothing changed; would compact" if dry_run else "compacted"
    if before == after:
        done = "nothing to compact in"
    lines.append(
        f"{done} {planned.output}: {before} -> {after} data files in {len(planned.folders)} "
        f"folder(s) (merged files of at most {planned.rows_per_file} rows)"
    )
    return "\n".join(lines)


def describe(merge: tuple[DataFile, ...]) -> str:
    names = ", ".join(f"{posixpath.basename(file.path)} ({file.rows})" for file in merge)
    return f"{names} -> one file of {sum(file.rows for file in merge)} rows"
