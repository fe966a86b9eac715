"""The output: its schema, the Parquet sink that commits whole files, and the run report.

Each write task writes its files under a temporary name in `_tmp/` and then moves each into place
(on S3 a single PUT is already atomic), so readers only ever see complete files. File names carry
the run id and a digest of the video ids inside, so a retried task rewrites the same file instead
of adding a second copy. Rows a run relabels are withdrawn from the committed files before it
starts (`withdraw`), so a reader never sees a video twice. Everything that is not data lives
under `_`-prefixed names.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from vivit_batch import storage
from vivit_batch.sources import VERSION_COLUMNS

RUNS_DIR = "_runs"
VERSIONS_DIR = "_versions"
TMP_DIR = "_tmp"
IDENTITY_FILE = "_dataset.json"
"""What produced the dataset (model weights, preprocessing): one model per output."""
PARTITION_COLUMNS = ("run_date",)
"""What `output.partition_by` may name: the UTC date the run started"""
PARTITION_TYPE = pa.dictionary(pa.int32(), pa.string())


def output_schema(hidden_size: int, partition_by: tuple[str, ...] = ()) -> pa.Schema:
    """The columns every output row has, in order (manifest columns follow them). Partition
    columns are dictionary-encoded strings, the type readers infer from `key=value` folders."""
    partitions = [(name, PARTITION_TYPE) for name in partition_by]
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("uri", pa.string()),
            ("status", pa.string()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
            ("label", pa.string()),
            ("label_id", pa.int32()),
            ("score", pa.float32()),
            ("topk_labels", pa.list_(pa.string())),
            ("topk_ids", pa.list_(pa.int32())),
            ("topk_scores", pa.list_(pa.float32())),
            ("embedding", pa.list_(pa.float32(), hidden_size)),
            ("duration_s", pa.float64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("num_frames", pa.int64()),
            ("clip_start_s", pa.float64()),
            ("clip_end_s", pa.float64()),
            *VERSION_COLUMNS.items(),
            ("model", pa.string()),
            ("model_sha256", pa.string()),
            ("run_id", pa.string()),
            ("processed_at", pa.timestamp("us", tz="UTC")),
            *partitions,
        ]
    )


RESERVED_COLUMNS = set(output_schema(1, PARTITION_COLUMNS).names) - {"video_id", "uri"}


@dataclass
class WriteStats:
    """What one write task committed, summed up on the driver for the run report."""

    rows: int = 0
    files: list[str] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    clips: int = 0
    decode_seconds: float = 0.0
    inference_seconds: float = 0.0
    bytes_read: int = 0

    def add(self, other: WriteStats) -> None:
        self.rows += other.rows
        self.files += other.files
        self.status.update(other.status)
        self.error_codes.update(other.error_codes)
        self.clips += other.clips
        self.decode_seconds += other.decode_seconds
        self.inference_seconds += other.inference_seconds
        self.bytes_read += other.bytes_read


class ParquetSink(Datasink):
    def __init__(
        self,
        output_uri: str,
        run_id: str,
        schema: pa.Schema,
        rows_per_file: int,
        storage_options: dict | None = None,
        partition_values: dict[str, str] | None = None,
    ):
        self.output_uri = output_uri.rstrip("/")
        self.storage_options = storage_options
        self.run_id = run_id
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.partition_values = partition_values or {}
        """this run's value of each partition column"""
        self.stats = WriteStats()

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        filesystem, path = storage.filesystem(self.output_uri, self.storage_options)
        filesystem.makedirs(path, exist_ok=True)

    def write(self, blocks, ctx) -> WriteStats:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return WriteStats()
        table = pa.concat_tables(tables, promote_options="default")
        stats = stats_of(table)
        # Sorted, so that a retried task cuts the same files.
        output = self.to_output_table(table).sort_by("video_id")
        # Ray Data hands a task at least `min_rows_per_write` rows, and sometimes more.
        for start in range(0, output.num_rows, self.rows_per_file):
            stats.files.append(self.commit(output.slice(start, self.rows_per_file)))
        return stats

    def on_write_complete(self, write_result) -> None:
        for stats in write_result.write_returns:
            self.stats.add(stats)

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

    def commit(self, table: pa.Table) -> str:
        """Write `table` so that it appears whole or not at all; return its final URI."""
        ids = "\n".join(sorted(table.column("video_id").to_pylist()))
        digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
        # Hive-style `name=value` folders: every row of this run has the run's values.
        folders = [f"{name}={value}" for name, value in self.partition_values.items()]
        final = "/".join([self.output_uri, *folders, f"part-{self.run_id}-{digest}.parquet"])
        replace_file(self.output_uri, final, table, self.storage_options)
        return final


def replace_file(output_uri: str, uri: str, table: pa.Table, options: dict | None) -> None:
    """Write `table` to `uri` (a file under `output_uri`) so that readers see the old file or the
    new one, never a part: locally through a temporary file under the output's `_tmp/` and a
    rename (which replaces atomically), on S3 with one PUT (an object is replaced whole)."""
    filesystem, path = storage.filesystem(uri, options)
    if not storage.is_local(uri):
        _write_parquet(filesystem, path, table)
        return
    filesystem.makedirs(posixpath.dirname(path), exist_ok=True)
    staging = posixpath.join(storage.local_path(output_uri), TMP_DIR, f"{uuid.uuid4().hex}.tmp")
    filesystem.makedirs(posixpath.dirname(staging), exist_ok=True)
    _write_parquet(filesystem, staging, table)
    filesystem.mv(staging, path)


def stats_of(table: pa.Table) -> WriteStats:
    status = table.column("status").to_pylist()
    codes = [c for c in table.column("error_code").to_pylist() if c]
    return WriteStats(
        rows=table.num_rows,
        status=Counter(status),
        error_codes=Counter(codes),
        clips=int(pa.compute.sum(table.column("_views")).as_py() or 0),
        decode_seconds=float(pa.compute.sum(table.column("_decode_s")).as_py() or 0),
        inference_seconds=float(pa.compute.sum(table.column("_inference_s")).as_py() or 0),
        bytes_read=int(pa.compute.sum(table.column("_bytes_read")).as_py() or 0),
    )


def write_run_report(output_uri: str, run_id: str, report: dict, options: dict | None) -> str:
    uri = f"{output_uri.rstrip('/')}/{RUNS_DIR}/{run_id}.json"
    filesystem, path = storage.filesystem(uri, options)
    filesystem.makedirs(posixpath.dirname(path), exist_ok=True)
    with filesystem.open(path, "w") as stream:
        json.dump(report, stream, indent=2, default=str)
    return uri


def _write_parquet(filesystem, path: str, table: pa.Table) -> None:
    with filesystem.open(path, "wb") as stream:
        pq.write_table(table, stream, compression="zstd")


def read_identity(output_uri: str, options: dict | None) -> dict | None:
    filesystem, path = storage.filesystem(f"{output_uri.rstrip('/')}/{IDENTITY_FILE}", options)
    if not filesystem.exists(path):
        return None
    with filesystem.open(path, "r") as stream:
        return json.load(stream)


def write_identity(output_uri: str, options: dict | None, identity: dict) -> None:
    filesystem, path = storage.filesystem(f"{output_uri.rstrip('/')}/{IDENTITY_FILE}", options)
    filesystem.makedirs(posixpath.dirname(path), exist_ok=True)
    with filesystem.open(path, "w") as stream:
        json.dump(identity, stream, indent=2)


def committed_files(
    output_uri: str, options: dict | None, columns: list[str]
) -> dict[str, pa.Table]:
    """Each committed data file's `columns` (null where a file lacks one); empty for a new
    output."""
    dataset = _committed_dataset(output_uri, options)
    if dataset is None:
        return {}
    files = {}
    for fragment in dataset.get_fragments():
        present = [c for c in columns if c in fragment.physical_schema.names]
        table = fragment.to_table(columns=present)
        for name in columns:
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows))
        files[fragment.path] = table.select(columns)
    return files


def _committed_dataset(output_uri: str, options: dict | None) -> ds.Dataset | None:
    """The output's data files as readers see them; None for a new output."""
    filesystem, path = storage.filesystem(output_uri, options)
    if not filesystem.exists(path):
        return None
    return ds.dataset(path, filesystem=filesystem, format="parquet")


def withdraw(
    output_uri: str, options: dict | None, files: dict[str, pa.Table], video_ids: pa.Array
) -> int:
    """Remove the rows of `video_ids` from the committed files that hold them, each file
    replaced atomically, so that a reader never sees a video twice: a video is absent until
    this run commits its new row. A file left with no rows stays, empty: deleting it would
    fail a reader that listed it a moment before. Returns the rows removed."""
    filesystem, _ = storage.filesystem(output_uri, options)
    removed = 0
    for path, rows in files.items():
        stale = pa.compute.is_in(rows.column("video_id"), video_ids)
        count = pa.compute.sum(stale).as_py() or 0
        if not count:
            continue
        table = pq.read_table(path, filesystem=filesystem)
        kept = table.filter(pa.compute.invert(stale))
        # Kept even when empty: a reader that has listed the file may still open it.
        replace_file(output_uri, _uri_of(output_uri, path), kept, options)
        removed += count
    return removed


def _uri_of(output_uri: str, path: str) -> str:
    """A path as the filesystem lists it, as a URI like `output_uri` (with its scheme)."""
    return path if storage.is_local(output_uri) else f"{output_uri.split('://')[0]}://{path}"


def archive_version(output_uri: str, options: dict | None, identity: dict) -> str:
    """Move the output's data files and identity under `_versions/<name>/` (same relative paths),
    the identity last, so that an interrupted move is finished by the next run that asks for
    it. The name comes from the identity: the weights' sha256 and a digest of the rest."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    archive = (
        f"{output_uri.rstrip('/')}/{VERSIONS_DIR}/{identity['weights_sha256'][:12]}-{digest[:8]}"
    )
    filesystem, root = storage.filesystem(output_uri, options)
    _, archive_root = storage.filesystem(archive, options)
    for path in _committed_dataset(output_uri, options).files:  # it has an identity: it exists
        target = posixpath.join(archive_root, posixpath.relpath(path, root))
        filesystem.makedirs(posixpath.dirname(target), exist_ok=True)
        filesystem.mv(path, target)
    filesystem.mv(posixpath.join(root, IDENTITY_FILE), posixpath.join(archive_root, IDENTITY_FILE))
    return archive
