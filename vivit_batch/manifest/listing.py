"""Listings of a directory, glob or S3 prefix of videos, streamed a page at a time in a fixed
order, each video with the version the listing gives (no request of its own); the local Parquet
file the scan writes them to as they stream by (`ListingFile`), which the run reads rather than
listing again, into Ray Data a block at a time (`listing_dataset`).

Order: the sorted order of the URIs, as a whole listing sorted would have it. Locally a walk, each
directory's entries sorted (a directory's names are what is held); on S3 the paginated listing,
which is in key order (one request per 1,000 keys; a glob that does not look into every level
lists level by level, as fsspec's `glob` does).
"""

from __future__ import annotations

import collections
import contextlib
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.asyn import sync
from fsspec.utils import glob_translate

from vivit_batch import storage
from vivit_batch.errors import ConfigError
from vivit_batch.output.schema import VERSION_COLUMNS
from vivit_batch.source_versions import version_of

VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".ts",
    ".mts",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
)
LISTING_SCHEMA = pa.schema([("uri", pa.string()), *VERSION_COLUMNS.items()])
"""A listing's rows: each video with its version as the listing gave it."""
PAGE_ROWS = 1000
"""Videos per batch of a listing (an S3 LIST page's worth)."""
ROW_GROUP_ROWS = 65536
"""Rows per row group of the listing file: what the scan holds before it writes."""
MAX_BLOCK_ROWS = 100_000
"""Most rows per block of a listing's dataset: what the driver holds at once."""


def is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def list_videos(uri: str, options: dict | None = None) -> Iterator[pa.RecordBatch]:
    """Video files under a directory or prefix, or matching a glob (fsspec's `glob` rules),
    sorted, schemes kept, a page at a time (`LISTING_SCHEMA`)."""
    filesystem, path = storage.filesystem(uri, options)
    glob = GlobParts.of(path) if is_glob(path) else GlobParts(path)
    if storage.is_local(uri):
        files: Iterator[tuple[str, dict | None]] = (
            (name, None) for name in _local_files(glob.root, glob.depth)
        )
        scheme = ""
    else:
        if not filesystem.split_path(glob.root)[0]:
            raise ConfigError(f"manifest {uri}: name the bucket before the first wildcard")
        files = _s3_objects(filesystem, glob.root, glob.depth, glob.stem)
        scheme = "s3://"
    videos = (
        (scheme + name, version_of(info or filesystem.info(name)))
        for name, info in files
        if name.lower().endswith(VIDEO_EXTENSIONS) and glob.matches(name)
    )
    for page in groups(videos, PAGE_ROWS):
        columns = {"uri": [uri for uri, _ in page]}
        columns |= {name: [version[name] for _, version in page] for name in VERSION_COLUMNS}
        yield pa.record_batch(columns, schema=LISTING_SCHEMA)


@dataclass(frozen=True)
class GlobParts:
    """What fsspec's `glob` lists for a pattern, and how it keeps what matches."""

    root: str
    """the folder up to the last "/" before the first wildcard (or the whole path: no glob)"""
    stem: str = ""
    """the name's start between `root` and the first wildcard: S3 filters by it"""
    depth: int | None = None
    """levels below `root` that can match (None: all, for `**`)"""
    pattern: re.Pattern | None = None

    @classmethod
    def of(cls, path: str) -> GlobParts:
        first = min(path.find(ch) for ch in "*?[" if ch in path)
        cut = path.rfind("/", 0, first) + 1
        depth = None if "**" in path else path[cut:].count("/") + 1
        return cls(path[:cut], path[cut:first], depth, re.compile(glob_translate(path)))

    def matches(self, name: str) -> bool:
        return self.pattern is None or bool(self.pattern.match(name))


def _local_files(path: str, depth: int | None) -> Iterator[str]:
    """Files under `path` (`path` itself if it is one, nothing if it does not exist) in sorted
    order, `depth` levels down at most (None: all): depth first, each directory's entries
    sorted by name, a directory's as "name/" as its files' paths go on. Folders that cannot be
    read are left out, as fsspec's `find` leaves them."""
    if not os.path.isdir(path):
        if os.path.lexists(path):
            yield path
        return
    try:
        with os.scandir(path) as found:
            names = sorted(entry.name + "/" if entry.is_dir() else entry.name for entry in found)
    except OSError:
        return
    for name in names:
        if not name.endswith("/"):
            yield posixpath.join(path, name)
        elif depth is None or depth > 1:
            yield from _local_files(posixpath.join(path, name[:-1]), depth and depth - 1)


def _s3_objects(
    filesystem: fsspec.AbstractFileSystem, path: str, depth: int | None, stem: str = ""
) -> Iterator[tuple[str, dict]]:
    """(name, info) of the objects under `path` ("bucket/key") whose name after it starts with
    `stem`, in key order, `depth` levels down at most (None: all); the object `path` itself
    when nothing is under it (as fsspec's `find` has it)."""
    bucket, key, _ = filesystem.split_path(path)
    prefix = f"{key.rstrip('/')}/" if key else ""
    found = False
    for name, info in _s3_walk(filesystem, bucket, prefix + stem, depth):
        found = True
        yield name, info
    if not found and key and not stem:
        with contextlib.suppress(FileNotFoundError):
            info = filesystem.info(path)
            if info["type"] != "directory":
                yield info["name"], info


def _s3_walk(
    filesystem: fsspec.AbstractFileSystem, bucket: str, prefix: str, depth: int | None
) -> Iterator[tuple[str, dict]]:
    """Objects whose key starts with `prefix`, in key order: all of them in one listing (None),
    else the first level's (a listing by "/") and the levels below up to `depth`, each walked
    where its name comes in key order."""
    waiting: collections.deque[str] = collections.deque()
    """the folders listed and not yet walked, as "bucket/key/": a page lists its folders first"""

    def walk_waiting(before: str | None = None) -> Iterator[tuple[str, dict]]:
        while waiting and (before is None or waiting[0] < before):
            folder = waiting.popleft()
            yield from _s3_walk(filesystem, bucket, folder.split("/", 1)[1], depth and depth - 1)

    for info in _s3_listing(filesystem, bucket, prefix, "/" if depth else ""):
        if info["type"] != "directory":
            yield from walk_waiting(info["name"])
            yield info["name"], info
        elif depth and depth > 1:
            waiting.append(info["name"] + "/")
    yield from walk_waiting()


def _s3_listing(
    filesystem: fsspec.AbstractFileSystem, bucket: str, prefix: str, delimiter: str
) -> Iterator[dict]:
    """s3fs's paginated listing (each page retried as s3fs retries any request), a page at a
    time: objects (and with a `delimiter`, the folders before each page's objects)."""
    listing = filesystem._iterdir(bucket, delimiter=delimiter, prefix=prefix)
    try:
        while page := sync(filesystem.loop, _next_items, listing, PAGE_ROWS):
            yield from page
    finally:
        sync(filesystem.loop, listing.aclose)


async def _next_items(items, count: int) -> list:
    """The next `count` items of an async iterator (fewer at its end)."""
    taken = []
    async for item in items:
        taken.append(item)
        if len(taken) == count:
            break
    return taken


def groups(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    page = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


class ListingFile:
    """A new local Parquet file that a listing is written to as it streams by (the scan's):
    its path is what the run reads. Removed by `remove`, or by whoever holds its path
    (`remove_listing`)."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="vivit-batch-listing-", suffix=".parquet")
        os.close(handle)
        self._writer = pq.ParquetWriter(self.path, LISTING_SCHEMA)
        self._held: list[pa.RecordBatch] = []

    def passing(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """`batches`, each written as it passes (in row groups of `ROW_GROUP_ROWS`)."""
        for batch in batches:
            self._held.append(batch)
            if sum(held.num_rows for held in self._held) >= ROW_GROUP_ROWS:
                self._write()
            yield batch

    def close(self) -> None:
        self._write()
        self._writer.close()

    def remove(self) -> None:
        self._writer.close()
        remove_listing(self.path)

    def _write(self) -> None:
        if self._held:
            self._writer.write_table(pa.Table.from_batches(self._held, LISTING_SCHEMA))
            self._held = []


def remove_listing(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def listing_dataset(path: str):
    """A listing file's rows as a Ray Data dataset, put in the object store a block at a time
    (the driver holds one; any node can read them): as many blocks as Ray Data's own reads make
    (`read_op_min_num_blocks`, at most one per row), more where one would pass
    `MAX_BLOCK_ROWS`, so that the decode actors share the listing."""
    import ray

    listing = pq.ParquetFile(path)
    rows = listing.metadata.num_rows
    least = ray.data.DataContext.get_current().read_op_min_num_blocks
    blocks = max(min(rows, least), -(-rows // MAX_BLOCK_ROWS), 1)
    batches = listing.iter_batches(batch_size=max(1, -(-rows // blocks)))
    refs = [ray.put(pa.Table.from_batches([batch])) for batch in batches]
    return ray.data.from_arrow_refs(refs or [ray.put(LISTING_SCHEMA.empty_table())])
