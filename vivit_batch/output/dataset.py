"""`Output`: one output dataset, its layout, and every write made to it.

    OUT/
      part-<run_id>-<digest>.parquet      committed rows (or under run_date=YYYY-MM-DD/)
      _dataset.json                       identity: model, preprocessing, sampling, layout
      _lock.json, _lock.guard             the lock (`lock.py`; the guard only on local disk)
      _runs/<run_id>.json                 run reports
      _tmp/<run_id>/...                   staged files, before they are committed
      _tmp/<run_id>/merges/*.json         merges under way where no folder swap exists
      _versions/<name>/...parquet.archived   earlier versions (`--new-version`, `relabel`)

Readers (pyarrow, pandas, DuckDB's `OUT/**/*.parquet`) see committed rows only: bookkeeping
names start with `_`, and no file ends in `.parquet` unless it is current committed data.

Every change is staged first (written whole under the run's own `_tmp/<run_id>/`, fsync'd on
local disk) and then committed inside the run's `lock.fenced()`: a rename on local disk; on S3
one server-side copy, sent once with the lease's deadline and retried only through a new fence
check. So a file appears whole or not at all, and a run that has lost its lock commits nothing.

Compaction (`compaction`) also swaps whole data folders of a local output (`swap_folder`): each
is rebuilt beside the output, in `.<name>._swap/<run_id>/`, where its files can carry their final
`.parquet` names (under the output, DuckDB's recursive glob would read them, `_` and `.` folders
included), then exchanged with the folder in one atomic step.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from vivit_batch import storage
from vivit_batch.errors import ConfigError
from vivit_batch.output.exchange import exchange
from vivit_batch.output.lock import Lease, OutputLock
from vivit_batch.output.mounts import require_lockable_filesystem
from vivit_batch.output.records import (
    ConditionalWritesUnsupported,
    LocalRecord,
    S3Record,
    sync_directory,
)
from vivit_batch.output.runs import RunReport
from vivit_batch.output.schema import ROW_TYPES

log = logging.getLogger("vivit_batch")

IDENTITY_FILE = "_dataset.json"
LOCK_FILE = "_lock.json"
LOCK_GUARD = "_lock.guard"
RUNS_DIR = "_runs"
TMP_DIR = "_tmp"
VERSIONS_DIR = "_versions"
MERGES_DIR = "merges"
"""Under a run's `_tmp/<run_id>/`: the intent records of its merges (`record_merge`)."""
SWAP_SUFFIX = "._swap"
"""`.<output name>._swap/`, beside a local output: where folders are rebuilt (`swap_staging`)."""
DELETES_PER_REQUEST = 1000
"""S3's most keys in one DeleteObjects request."""
ARCHIVED_SUFFIX = ".archived"
"""Appended to archived data files, so that no recursive `*.parquet` glob reaches them."""
RELABELLING = "relabelling"
"""The key of the identity that `relabel` sets before it replaces its first file and takes out
with its last: while it is there, some files hold the head's labels and the others the labels
before it, and whatever would add or merge rows waits for the relabel to be finished."""
FENCED_ATTEMPTS = 3
"""How many fence checks a commit on S3 gets: each sends its request once."""


class Output:
    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options
        self.filesystem, self.root = storage.filesystem(self.uri, storage_options)
        self.is_local = storage.is_local(self.uri)
        self.is_s3 = storage.is_s3(self.uri)
        self._single_attempt = None
        """an S3 filesystem without retries, for fenced requests (made when first needed)"""

    @classmethod
    def existing(cls, uri: str, storage_options: dict | None = None) -> Output:
        """An output that runs wrote; `ConfigError` for a path that is missing or not one, or a
        store that cannot be read (a bad URI, unreachable, refused)."""
        from botocore.exceptions import BotoCoreError

        try:
            output = cls(uri, storage_options)
            exists = output.filesystem.exists(output.root)
            identity = exists and output.read_identity()
        except (OSError, ValueError, BotoCoreError) as error:
            raise ConfigError(
                f"{uri}: cannot read it ({error}); check the URI, the credentials and "
                "storage.endpoint_url"
            ) from error
        if not exists:
            raise ConfigError(f"{uri}: no such output; give the --output of earlier runs")
        if identity is None:
            raise ConfigError(
                f"{uri} is not a vivit-batch output (it has no {IDENTITY_FILE}); give the "
                "--output of earlier runs"
            )
        return output

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_of(self, path: str) -> str:
        """A path as the filesystem lists it, as a URI with the output's scheme."""
        return path if self.is_local else f"{self.uri.split('://')[0]}://{path}"

    def create(self) -> None:
        self.filesystem.makedirs(self.root, exist_ok=True)

    # The lock

    def lock(
        self,
        run_id: str,
        stale_after_s: float,
        wait_s: float | None = None,
        on_lost: Callable[[str], None] | None = None,
        *,
        read_only: bool = False,
    ) -> OutputLock:
        """This output's lock for `run_id` (not yet taken). Refuses outputs whose store cannot
        make the conditional writes the lock needs, or, locally, whose filesystem's `flock` it
        cannot rely on (`mounts`). `read_only`: to look at the lock, never to take it (the
        output is not created, the store's conditional writes and filesystem not checked)."""
        if not read_only:
            self.create()
        store: LocalRecord | S3Record
        if self.is_local:
            if not read_only:
                require_lockable_filesystem(self.root, self.uri)
            store = LocalRecord(self.path(LOCK_FILE), self.path(LOCK_GUARD))
        elif self.is_s3:
            store = S3Record(self.filesystem, self.path(LOCK_FILE))
            if not read_only:
                self._require_conditional_writes(store)
        else:
            raise ConfigError(
                f"output {self.uri}: vivit-batch can lock local and s3:// outputs only. If you "
                "make sure that only one run at a time writes this output, set run.locking=none"
            )
        return OutputLock(store, self.uri, run_id, stale_after_s, wait_s, on_lost)

    def _require_conditional_writes(self, store: S3Record) -> None:
        try:
            store.require_conditional_writes()
        except ConditionalWritesUnsupported as error:
            raise ConfigError(
                f"output {self.uri}: {error}. The output's lock needs them (AWS S3, MinIO, "
                "Ceph RGW and R2 have them). If you make sure that only one run at a time "
                "writes this output, set run.locking=none"
            ) from error

    def checked_identity(self) -> dict | None:
        """The output's identity (`read_identity`), once it is checked that runs can write here
        (before any work; `ConfigError` otherwise): on local disk the output directory, or the
        nearest one above it that exists, is writable; elsewhere a probe object written under
        `_tmp/` and deleted again (what the credentials allow)."""
        try:
            if self.is_local:
                self._check_local_access()
            else:
                probe = self.path(TMP_DIR, f"write-check-{uuid.uuid4().hex}")
                self.filesystem.pipe_file(probe, b"")
                with contextlib.suppress(FileNotFoundError):  # a holder's clean-up took it
                    self.filesystem.rm_file(probe)
            return self.read_identity()
        except FileNotFoundError as error:
            raise ConfigError(
                f"output {self.uri}: its bucket or location does not exist ({error}): create it, "
                "or check --output"
            ) from error
        except OSError as error:
            raise ConfigError(
                f"output {self.uri} cannot be written with these credentials "
                f"({type(error).__name__}: {error}): check --output and the storage settings "
                "(storage.*, AWS_* variables)"
            ) from error

    def _check_local_access(self) -> None:
        existing = os.path.abspath(self.root)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ConfigError(f"output {self.uri}: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing} is not writable by this user")

    # Identity

    def read_identity(self) -> dict | None:
        path = self.path(IDENTITY_FILE)
        if not self.filesystem.exists(path):
            return None
        with self.filesystem.open(path, "rb") as stream:
            return json.load(stream)

    def write_identity(self, identity: dict, lock: Fence) -> None:
        data = json.dumps(identity, indent=2).encode()
        self.write(self.path(IDENTITY_FILE), data, lock, stage_as=IDENTITY_FILE)

    # Committed rows

    def each_file(
        self, columns: list[str], where: ds.Expression | None = None
    ) -> Iterator[tuple[str, pa.Table]]:
        """(path, `columns` of its rows that match `where`) of each committed data file in path
        order, one file at a time (typed nulls where a file lacks a column): memory bounded by
        the largest file."""
        dataset = self.dataset()
        for fragment in sorted(dataset.get_fragments(), key=lambda f: f.path):
            yield (
                fragment.path,
                fragment.to_table(schema=dataset.schema, columns=columns, filter=where),
            )

    def file_rows(self, path: str, schema: pa.Schema) -> pa.Table:
        """The rows of the data file at `path` in `schema`'s columns (typed nulls where the file
        lacks one): one file read on its own, by a task."""
        files = ds.dataset(path, schema=schema, filesystem=self.filesystem, format="parquet")
        return files.to_table()

    def dataset(self) -> ds.Dataset:
        """The committed rows as readers see them, with every file's columns (null where a file
        lacks one: manifests may gain columns between runs); the columns every row has when
        there are no rows yet."""
        files = self._dataset()
        schemas = [fragment.physical_schema for fragment in files.get_fragments()] if files else []
        schema = pa.unify_schemas(schemas or [ROW_TYPES], promote_options="permissive")
        if files is None:
            return ds.dataset([], schema=schema, format="parquet")
        return files.replace_schema(schema)

    def columns(self) -> list[str]:
        """The columns of the committed data files, in the order first seen (none for an
        output with no rows yet)."""
        dataset = self.dataset()
        return dataset.schema.names if dataset.files else []

    def data_files(self, folder: str | None = None) -> list[str]:
        """The committed data files (only those under `folder`, if given), in path order (none
        for a new output)."""
        dataset = self._dataset(folder)
        return sorted(dataset.files) if dataset else []

    def archive(self, identity: dict, lock: Fence) -> str:
        """Move the data files and identity under `_versions/<name>/` (same relative paths,
        `.archived` appended to data files), the identity last, so that an interrupted move
        is finished by the next run that asks for it. The name comes from the identity: the
        weights' sha256 and a digest of the rest."""
        archive = self.version_dir(identity)
        for path in self.data_files():
            self.move(path, self.archived_path(path, archive), lock)
        self.move(self.path(IDENTITY_FILE), posixpath.join(archive, IDENTITY_FILE), lock)
        return self.uri_of(archive)

    def version_dir(self, identity: dict) -> str:
        """Where the version with `identity` is archived: `_versions/<name>/`, the name made of
        the weights' sha256 and a digest of the rest."""
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return self.path(VERSIONS_DIR, f"{identity['weights_sha256'][:12]}-{digest[:8]}")

    def archived_path(self, path: str, archive: str) -> str:
        """Where the data file at `path` goes in the version folder `archive`."""
        return posixpath.join(archive, posixpath.relpath(path, self.root)) + ARCHIVED_SUFFIX

    def keep_identity(self, identity: dict, lock: Fence) -> str:
        """Begin keeping the current version while its files are replaced one by one
        (`replace_keeping`): its identity copied to its `_versions/<name>/` folder, unless an
        interrupted attempt did it already. Returns the folder."""
        archive = self.version_dir(identity)
        kept = posixpath.join(archive, IDENTITY_FILE)
        if not self.filesystem.exists(kept):
            self.write(kept, json.dumps(identity, indent=2).encode(), lock, stage_as=IDENTITY_FILE)
        return archive

    def replace_keeping(self, path: str, data: bytes, archive: str, lock: Fence) -> None:
        """Replace the data file at `path` by `data` under the same name, its current content
        first copied into the version folder `archive` (unless an interrupted attempt copied it
        already). A reader sees the old file or the new one, never both or neither: each
        video's rows stay in one file throughout."""
        kept = self.archived_path(path, archive)
        if not self.filesystem.exists(kept):
            self.copy(path, kept, lock)
        self.write(path, data, lock, stage_as=posixpath.basename(path))

    def hide_legacy_archives(self, lock: Fence) -> int:
        """Archived data files still named `….parquet` (archives made before the `.archived`
        suffix) are current rows to DuckDB's recursive glob: rename them. Returns how many."""
        legacy = self.filesystem.glob(self.path(VERSIONS_DIR, "**", "*.parquet"))
        for path in legacy:
            self.move(path, path + ARCHIVED_SUFFIX, lock)
        return len(legacy)

    def _dataset(self, folder: str | None = None) -> ds.Dataset | None:
        """The data files as readers see them (under `folder`, if given); None where there is
        no such folder (a new output)."""
        folder = folder or self.root
        if not self.filesystem.exists(folder):
            return None
        return ds.dataset(folder, filesystem=self.filesystem, format="parquet")

    # Staging and committing

    def stage(self, data: bytes, run_id: str, name: str) -> str:
        """Write `data` whole under `_tmp/<run_id>/` (fsync'd locally); returns its path. Runs
        anywhere: nothing is visible to readers until `commit`."""
        staged = self.staging_path(run_id, name)
        self._put(staged, data)
        return staged

    def _put(self, path: str, data: bytes) -> None:
        """Write `data` whole at `path`, not yet visible to readers (fsync'd locally)."""
        if self.is_local:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            write_synced(path, data)
        else:
            self.filesystem.pipe_file(path, data)

    def staging_path(self, run_id: str, name: str) -> str:
        """A new path under `_tmp/<run_id>/` for a file to be committed as `name`."""
        return self.path(TMP_DIR, run_id, f"{name}.{uuid.uuid4().hex[:8]}.tmp")

    def commit(self, staged: str, final: str, lock: Fence) -> None:
        """Put a staged file at `final` (replacing any file there) while `lock` holds."""
        self.move(staged, final, lock)

    def move(self, source: str, target: str, lock: Fence) -> None:
        """Move one file inside the output, fenced by `lock`: an atomic rename locally (and
        the folder synced), one server-side copy on S3 (then the source deleted)."""
        if self.is_local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            with lock.fenced():
                os.replace(source, target)
            sync_directory(posixpath.dirname(target))
            return
        self._fenced_copy(source, target, lock)
        self.filesystem.rm_file(source)

    def copy(self, source: str, target: str, lock: Fence) -> None:
        """Copy one file inside the output, fenced by `lock`; the source stays where it is.
        Locally a hard link (a copy where the disk has none) staged and renamed into place, so
        the copy too appears whole; on S3 one server-side copy."""
        if not self.is_local:
            self._fenced_copy(source, target, lock)
            return
        staged = self.staging_path(lock.run_id, posixpath.basename(target))
        os.makedirs(posixpath.dirname(staged), exist_ok=True)
        link_or_copy(source, staged)
        self.move(staged, target, lock)

    def write(self, final: str, data: bytes, lock: Fence, stage_as: str) -> None:
        """Stage `data` and commit it at `final`."""
        self.commit(self.stage(data, lock.run_id, stage_as), final, lock)

    def clear_staging(self, run_id: str) -> None:
        """Remove what run `run_id` staged and did not commit (only that run's own files), and
        the folders it rebuilt or swapped out (`swap_staging`)."""
        folders = [self.path(TMP_DIR, run_id)]
        folders += [self.swap_staging(run_id)] if self.is_local else []
        for folder in folders:
            with contextlib.suppress(FileNotFoundError):
                self.filesystem.rm(folder, recursive=True)
        self._remove_empty_swap_staging()

    def clear_dead_staging(self, lock: Fence) -> int:
        """Finish the merges that earlier holders left half done (`finish_merges`), then remove
        what other runs staged and never committed: they are dead, since this run holds the
        lock. Each run's folder is removed inside a fence (a holder paused past its lease
        removes nothing). Returns how many folders went."""
        self.finish_merges(lock)
        removed = 0
        for path in self._staging_folders() + self._swap_folders():
            if posixpath.basename(path) == lock.run_id:
                continue
            with lock.fenced() as lease:
                self._remove_tree(path, lease)
            removed += 1
        self._remove_empty_swap_staging()
        return removed

    def _staging_folders(self) -> list[str]:
        try:
            return [entry["name"] for entry in self.filesystem.ls(self.path(TMP_DIR), detail=True)]
        except FileNotFoundError:
            return []

    def _swap_folders(self) -> list[str]:
        if not self.is_local or not os.path.isdir(self.swap_staging()):
            return []
        return [entry.path for entry in os.scandir(self.swap_staging())]

    def _remove_empty_swap_staging(self) -> None:
        if self.is_local:
            with contextlib.suppress(OSError):  # absent, or another run's folder is in it
                os.rmdir(self.swap_staging())

    def _remove_tree(self, path: str, lease: Lease) -> None:
        if self.is_s3:
            single = self._single_attempt_filesystem()
            lease.run(lambda: single._rm(path, recursive=True), single.loop)
        else:  # a run's folder, or a write-check probe
            self.filesystem.rm(path, recursive=True)

    def _fenced_copy(self, source: str, target: str, lock: Fence) -> None:
        """One server-side copy inside a fence (`_fenced_request`)."""
        what = f"copying {source} to {target}"
        self._fenced_request(what, lambda lease: self._copy(source, target, lease), lock)

    def _fenced_request(self, what: str, request: Callable[[Lease], None], lock: Fence) -> None:
        """One request inside a fence: sent once, abandoned when the lease ends, and retried
        (transient failures only) through a new fence check."""
        for attempt in range(1, FENCED_ATTEMPTS + 1):
            with lock.fenced() as lease:
                try:
                    request(lease)
                    return
                except (FileNotFoundError, PermissionError):
                    raise
                except OSError as error:
                    if attempt == FENCED_ATTEMPTS:
                        raise
                    log.warning("%s failed (%s): again", what, error)

    def _copy(self, source: str, target: str, lease: Lease) -> None:
        if not self.is_s3:
            self.filesystem.copy(source, target)
            return
        bucket, key, _ = self.filesystem.split_path(target)
        source_bucket, source_key, _ = self.filesystem.split_path(source)
        single = self._single_attempt_filesystem()
        lease.run(
            lambda: single._call_s3(
                "copy_object",
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": source_bucket, "Key": source_key},
            ),
            single.loop,
        )

    def _single_attempt_filesystem(self):
        if self._single_attempt is None:
            self._single_attempt = storage.single_attempt_s3(self.storage_options)
        return self._single_attempt

    # Compaction: deleting files, merges recorded before they start, folders swapped whole

    def delete(self, paths: list[str], lock: Fence) -> None:
        """Remove committed files (those already gone are skipped), fenced by `lock`: locally
        all under one fence (then their folders synced); on S3 in one DeleteObjects request per
        1,000 files, each sent as `_fenced_request` sends it."""
        if self.is_local:
            with lock.fenced():
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            for folder in sorted({posixpath.dirname(path) for path in paths}):
                sync_directory(folder)
            return
        for start in range(0, len(paths), DELETES_PER_REQUEST):
            batch = paths[start : start + DELETES_PER_REQUEST]
            what = f"deleting {len(batch)} files"
            self._fenced_request(what, functools.partial(self._delete, batch), lock)

    def _delete(self, paths: list[str], lease: Lease) -> None:
        keys = [self.filesystem.split_path(path) for path in paths]
        single = self._single_attempt_filesystem()
        answer = lease.run(
            lambda: single._call_s3(
                "delete_objects",
                Bucket=keys[0][0],
                Delete={"Objects": [{"Key": key} for _, key, _ in keys], "Quiet": True},
            ),
            single.loop,
        )
        if answer.get("Errors"):
            error = answer["Errors"][0]
            raise PermissionError(f"{error.get('Key')}: {error.get('Code')} {error.get('Message')}")

    def record_merge(self, run_id: str, sources: list[str], merged: str) -> str:
        """Record, under `_tmp/<run_id>/merges/`, that the data files `sources` are being
        merged into `merged`, before `merged` is committed; returns the record's path. Where
        the merge stops halfway, the next holder of the lock finishes it (`finish_merges`)."""
        path = self.path(TMP_DIR, run_id, MERGES_DIR, posixpath.basename(merged) + ".json")
        self._put(path, json.dumps({"merged": merged, "sources": sources}).encode())
        return path

    def finish_merges(self, lock: Fence) -> int:
        """Finish the merges recorded (`record_merge`) and never completed, by any earlier
        holder: where the merged file was committed, the sources still there are deleted
        (fenced); where it was not, the sources still hold the rows. Either way the record
        goes. Returns how many merges were finished."""
        finished = 0
        for path in sorted(self.filesystem.glob(self.path(TMP_DIR, "*", MERGES_DIR, "*.json"))):
            with self.filesystem.open(path, "rb") as stream:
                merge = json.load(stream)
            if self.filesystem.exists(merge["merged"]):
                left = [source for source in merge["sources"] if self.filesystem.exists(source)]
                if left:
                    self.delete(left, lock)
                finished += 1
                log.warning(
                    "finished a merge that an earlier compaction left half done: %d files "
                    "deleted, their rows are in %s",
                    len(left),
                    self.uri_of(merge["merged"]),
                )
            self.filesystem.rm_file(path)
        return finished

    def swap_staging(self, run_id: str | None = None) -> str:
        """Where run `run_id` rebuilds the data folders it swaps in (`rebuild_folder`), on a
        local output: beside it, in `.<name>._swap/<run_id>/` (on the same filesystem as the
        output's real path), outside the tree that readers glob."""
        real = os.path.realpath(self.root)
        swap = posixpath.join(posixpath.dirname(real), f".{posixpath.basename(real)}{SWAP_SUFFIX}")
        return posixpath.join(swap, run_id) if run_id else swap

    def swap_unsupported(self, run_id: str) -> str | None:
        """Why `swap_folder` cannot work on this local output (None: it can), found by
        exchanging two empty folders: one in `_tmp/<run_id>/`, one in `swap_staging(run_id)`."""
        probes = [
            self.path(TMP_DIR, run_id, "swap-probe"),
            posixpath.join(self.swap_staging(run_id), "swap-probe"),
        ]
        try:
            for probe in probes:
                os.makedirs(probe, exist_ok=True)
            exchange(*probes)
        except OSError as error:  # no exchange here, or no folder beside the output
            return f"{error.strerror}{f': {error.filename}' if error.filename else ''}"
        finally:
            for probe in probes:
                with contextlib.suppress(OSError):
                    os.rmdir(probe)
        return None

    def rebuild_folder(
        self, folder: str, dropped: set[str], added: Iterable[tuple[str, bytes]], run_id: str
    ) -> str:
        """A new version of the local data folder `folder`, built in `swap_staging(run_id)`
        for `swap_folder`: each of its files but those named in `dropped` hard-linked (copied
        and fsync'd where the disk has no links), each (name, bytes) of `added` written and
        fsync'd, its permissions; synced. Returns its path. `ConfigError` where `folder` holds
        anything but files."""
        rebuilt = posixpath.join(self.swap_staging(run_id), posixpath.relpath(folder, self.root))
        with contextlib.suppress(FileNotFoundError):  # a try of this run's that stopped
            shutil.rmtree(rebuilt)
        os.makedirs(rebuilt)
        for entry in os.scandir(folder):
            if not entry.is_file(follow_symlinks=False):
                raise ConfigError(
                    f"{entry.path}: a data folder holds something other than files, so it cannot "
                    "be rebuilt and swapped whole; move it out of the output"
                )
            if entry.name not in dropped:
                link_or_copy(entry.path, posixpath.join(rebuilt, entry.name))
        for name, data in added:
            write_synced(posixpath.join(rebuilt, name), data)
        os.chmod(rebuilt, stat.S_IMODE(os.stat(folder).st_mode))
        sync_directory(rebuilt)
        return rebuilt

    def swap_folder(self, rebuilt: str, folder: str, lock: Fence) -> None:
        """Put the folder `rebuilt` (`rebuild_folder`) in the place of the data folder
        `folder` in one atomic exchange, fenced by `lock`; `rebuilt` then holds the old folder
        (`clear_staging` removes it). A reader lists the old folder or the new one, never both
        or neither."""
        with lock.fenced():
            exchange(rebuilt, folder)
        sync_directory(posixpath.dirname(folder))
        sync_directory(posixpath.dirname(rebuilt))

    # Run reports

    def report_uri(self, run_id: str) -> str:
        return self.uri_of(self.path(RUNS_DIR, f"{run_id}.json"))

    def write_report(self, report: RunReport, lock: Fence) -> None:
        path = self.path(RUNS_DIR, f"{report.run_id}.json")
        data = json.dumps(report.to_dict(), indent=2, default=str).encode()
        self.write(path, data, lock, stage_as=posixpath.basename(path))

    def read_reports(self) -> list[RunReport]:
        reports = []
        for path in sorted(self.filesystem.glob(self.path(RUNS_DIR, "*.json"))):
            with self.filesystem.open(path, "rb") as stream:
                reports.append(RunReport.from_dict(json.load(stream)))
        return reports


class Fence(Protocol):
    """What `Output` needs of a lock: `fenced()` around each commit, granting a `Lease`
    (`OutputLock`, or `Unlocked` for `run.locking=none`), and the run id whose `_tmp/` folder
    the run stages in."""

    @property
    def run_id(self) -> str: ...

    @property
    def generation(self) -> int | None: ...

    def fenced(self) -> contextlib.AbstractContextManager[Lease]: ...


class Unlocked:
    """`run.locking=none`: no lock is taken and commits are not fenced; the user makes sure
    that one run at a time writes the output."""

    generation: int | None = None

    def __init__(self, run_id: str = "unlocked"):
        self.run_id = run_id

    def __enter__(self) -> Unlocked:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def fenced(self) -> contextlib.AbstractContextManager[Lease]:
        return contextlib.nullcontext(Lease(ends_at=None))


def write_synced(path: str, data: bytes) -> None:
    """Write `data` to the local file `path` and fsync it (an error names the file: a full
    disk's, raised by the write, would not)."""
    try:
        with open(path, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, path) from error


def link_or_copy(source: str, target: str) -> None:
    """A hard link to the local file `source` at `target`; a copy, fsync'd, where the disk
    has no links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        with open(target, "rb+") as stream:
            os.fsync(stream.fileno())


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def unfinished_relabel(identity: dict | None, uri: str) -> str | None:
    """Where `identity` (the output's) records a relabel that stopped midway: what it left and
    how to finish it; else None."""
    relabelling = (identity or {}).get(RELABELLING)
    if relabelling is None:
        return None
    head = relabelling["model"]
    return (
        f"output {uri}: the relabel with {head} (run {relabelling['run_id']}) stopped midway: "
        "some files hold that head's labels, the others the labels before it. Finish it with "
        f"`vivit-batch relabel {uri} --model {head}` (or relabel with another head trained on "
        "this output's embeddings)"
    )


def require_relabel_finished(identity: dict | None, uri: str, what: str) -> None:
    """`ConfigError` (exit code 2) naming the fix where a relabel of the output stopped midway:
    `what` (a run, a compaction) would add or merge rows into files of two taxonomies."""
    problem = unfinished_relabel(identity, uri)
    if problem:
        raise ConfigError(f"{problem}; then start this {what} again")
