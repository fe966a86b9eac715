"""`RunWriter`: one run's whole write path, in the order of Ray Data's Datasink lifecycle.

- `files`: the `FileWriter` that stages files (unfenced).
- `start()`: the changes made before the first commit, once, when the first file is ready (so
  a run refused by its stages, or with nothing to write, has changed nothing): what dead runs
  staged removed, versions archived by older layouts renamed, the previous version archived
  (`--new-version`), the identity written.
- `commit(staged)`: one staged file made visible under the lock; the rows of videos the run
  relabels take the place of their old rows (`replacing`). Its statistics add to `stats`.
- `compact(section)`: `output.compact_after_files`, after the last commit: the folder the run's
  files went to compacted when it holds too many small files (`compaction`).
- `finish(report)`: the run report written, the run's own staging cleared.

Every write goes through the run's lock (`Fence`); the job only wires the stages to this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vivit_batch.config import OutputSection
from vivit_batch.output.compaction import compact_after_run
from vivit_batch.output.dataset import Fence, Output
from vivit_batch.output.replacing import Relabelled
from vivit_batch.output.runs import RunReport, WriteStats
from vivit_batch.output.sink import FileWriter, commit_staged

log = logging.getLogger("vivit_batch")


@dataclass
class RunWriter:
    output: Output
    lock: Fence
    files: FileWriter
    identity: dict
    """what `_dataset.json` says once the run commits"""
    relabelled: Relabelled
    archive: dict | None = None
    """the identity of the version `--new-version` archives before the first commit"""
    stats: WriteStats = field(default_factory=WriteStats)
    started: bool = False

    def start(self) -> None:
        if self.started:
            return
        output, lock = self.output, self.lock
        output.clear_dead_staging(lock)
        output.hide_legacy_archives(lock)
        if self.archive is not None:
            archived = output.archive(self.archive, lock)
            log.info("the output's previous version is now under %s", archived)
        output.write_identity(self.identity, lock)
        self.started = True

    def commit(self, staged: dict) -> None:
        """Commit one file `files` staged (a row of its output)."""
        self.start()
        self.stats.add(commit_staged(self.output, self.lock, staged, self.relabelled))

    def compact(self, section: OutputSection) -> None:
        """Compact the folder this run's files went to, if it committed any (`section`:
        `compact_after_files` and the settings it goes with)."""
        if self.stats.files:
            compact_after_run(self.output, self.lock, section, self.files.folder)

    def finish(self, report: RunReport) -> None:
        self.start()
        self.output.write_report(report, self.lock)
        self.output.clear_staging(self.lock.run_id)
