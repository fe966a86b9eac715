"""Reading manifests: their format, their rows as Arrow batches (streamed here, or as a Ray
Data dataset), URIs resolved and ids assigned. `FORMATS` is the one place that knows how each
format is read, both ways; a listing's are in `listing`.

A manifest is a CSV, JSONL, Parquet or text file (one URI per line) with a `uri` column and an
optional `video_id`, or a directory, glob or prefix of videos. Relative URIs resolve against the
manifest's location.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from vivit_batch import storage
from vivit_batch.config import ManifestSection
from vivit_batch.errors import ConfigError
from vivit_batch.manifest import json_lines
from vivit_batch.manifest.listing import (
    VIDEO_EXTENSIONS,
    ListingFile,
    groups,
    is_glob,
    list_videos,
    listing_dataset,
)
from vivit_batch.redact import unsigned_uri

FORMATS_BY_EXTENSION = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}
SCHEMES = storage.LOCAL_PROTOCOLS + storage.S3_PROTOCOLS
"""URI schemes videos and manifests may have, besides plain local paths."""
HTTP_SCHEMES = storage.HTTP_PROTOCOLS
"""Also accepted with `manifest.allow_http`."""


CSV_CONVERT = pa_csv.ConvertOptions(column_types={"video_id": pa.string(), "uri": pa.string()})


def drop_blank_lines(table: pa.Table) -> pa.Table:
    """A text manifest's raw lines (a `text` column) as URIs, less blank and `#` lines."""
    lines = pc.utf8_trim_whitespace(table.column("text"))
    keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
    return pa.table({"uri": lines}).filter(keep)


def _text_batches(stream: BinaryIO) -> Iterator[pa.RecordBatch]:
    for lines in groups((line.decode() for line in stream), 65536):
        yield from drop_blank_lines(pa.table({"text": lines})).to_batches()


@dataclass(frozen=True)
class Format:
    """How one manifest format is read: streamed from a file, and by Ray Data."""

    stream: Callable[[BinaryIO], Iterable[pa.RecordBatch]]
    ray_read: Callable[..., Any]
    """(uri, schema, **Ray Data's read arguments) -> dataset; `schema` is a JSON Lines file's"""
    then: Callable[[pa.Table], pa.Table] | None = None
    """applied to each block Ray Data reads"""


def _by_ray_data(reader: str, **options) -> Callable[..., Any]:
    """A read by `ray.data.<reader>`, with `options`."""

    def read(uri: str, schema: pa.Schema | None, **arguments):
        import ray

        return getattr(ray.data, reader)(uri, **options, **arguments)

    return read


def _read_json_lines(uri: str, schema: pa.Schema | None, **arguments):
    from vivit_batch.manifest.json_datasource import read_json_lines

    return read_json_lines(uri, schema, **arguments)


FORMATS = {
    "csv": Format(
        lambda stream: pa_csv.open_csv(stream, convert_options=CSV_CONVERT),
        _by_ray_data("read_csv", convert_options=CSV_CONVERT),
    ),
    "jsonl": Format(json_lines.stream_batches, _read_json_lines),
    "parquet": Format(
        lambda stream: pq.ParquetFile(stream).iter_batches(), _by_ray_data("read_parquet")
    ),
    "txt": Format(_text_batches, _by_ray_data("read_text"), then=drop_blank_lines),
}
"""Every file format; "videos" (a listing) is read by `listing.list_videos`."""


def manifest_format(section: ManifestSection, options: dict | None = None) -> str:
    if section.format != "auto":
        return section.format
    uri = section.uri.rstrip("/")
    if section.uri.endswith("/") or is_glob(uri) or uri.endswith(VIDEO_EXTENSIONS):
        return "videos"
    extension = posixpath.splitext(uri)[1].lower()
    if extension in FORMATS_BY_EXTENSION:
        return FORMATS_BY_EXTENSION[extension]
    filesystem, path = storage.filesystem(uri, options)
    if filesystem.isdir(path):
        return "videos"
    raise ConfigError(
        f"manifest {section.uri}: cannot tell its format from the extension; use .csv, .jsonl, "
        ".parquet or .txt, a directory or glob of videos, or set manifest.format"
    )


def base_directory(section: ManifestSection) -> str:
    """Where relative URIs in the manifest are resolved from (a listing's are all absolute)."""
    uri = section.uri
    if "://" not in uri:
        uri = posixpath.abspath(uri)
    return posixpath.dirname(uri)


def resolve_uri(uri: str, base: str) -> str:
    """Absolute form of a manifest URI: schemes kept, relative paths joined to `base`."""
    uri = uri.strip()
    if "://" in uri:
        return uri
    if uri.startswith("~"):
        return posixpath.expanduser(uri)
    if posixpath.isabs(uri) or not base:
        return posixpath.abspath(uri)
    joined = posixpath.join(base, uri)
    return joined if "://" in joined else posixpath.normpath(joined)


def video_id_for(uri: str) -> str:
    """Stable id of a resolved URI when the manifest gives none; the same for a presigned URL
    signed again (`unsigned_uri`)."""
    return hashlib.sha256(unsigned_uri(uri).encode()).hexdigest()[:20]


def output_names(columns: list[str], prefix: str | None) -> list[str]:
    """What the output calls a manifest's columns: `uri` and `video_id` as they are, the others
    behind `manifest.column_prefix` if there is one."""
    return [name if name in ("uri", "video_id") else f"{prefix or ''}{name}" for name in columns]


ID_SLICE_ROWS = 65_536
"""Rows `with_ids` resolves at a time: it makes a Python string of each URI and id, so a whole
block (Ray Data's reads make blocks of up to 128 MiB, a million rows or more of a Parquet
manifest) would cost its task about a GiB of them."""


def with_ids(table: pa.Table, base: str, prefix: str | None = None) -> pa.Table:
    """Resolve `uri` and fill `video_id` (string) for one block of manifest rows, the other
    columns renamed behind `prefix`; `ID_SLICE_ROWS` rows at a time."""
    if table.num_rows > ID_SLICE_ROWS:
        slices = range(0, table.num_rows, ID_SLICE_ROWS)
        return pa.concat_tables(
            with_ids(table.slice(start, ID_SLICE_ROWS), base, prefix) for start in slices
        )
    table = table.rename_columns(output_names(table.column_names, prefix))
    uris = [resolve_uri(u, base) for u in table.column("uri").to_pylist()]
    if "video_id" in table.column_names:
        given = table.column("video_id").cast(pa.string()).to_pylist()
        ids = [v or video_id_for(u) for v, u in zip(given, uris, strict=True)]
        table = table.drop_columns(["video_id"])
    else:
        ids = [video_id_for(u) for u in uris]
    uri_index = table.schema.get_field_index("uri")
    table = table.set_column(uri_index, "uri", pa.array(uris, pa.string()))
    return table.add_column(0, "video_id", pa.array(ids, pa.string()))


def supported_uri(uri: str, allow_http: bool = False) -> bool:
    """Whether `uri` is a local path or has a scheme this job reads."""
    if "://" not in uri:
        return True
    scheme = uri.split("://", 1)[0].lower()
    return scheme in SCHEMES or (allow_http and scheme in HTTP_SCHEMES)


def supported_schemes(section: ManifestSection) -> str:
    accepted = ", ".join(f"{s}://" for s in SCHEMES + (HTTP_SCHEMES if section.allow_http else ()))
    http = "" if section.allow_http else "; http:// and https:// with manifest.allow_http=true"
    return f"Supported: local paths, {accepted}{http}"


def batches(
    uri: str, fmt: str, options: dict | None, listing: ListingFile | None = None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(row offset, batch) over the manifest, streamed in this process; for a directory, glob
    or prefix, over the uris of its listing (written to `listing` as it passes, if given)."""
    offset = 0
    for batch in _record_batches(uri, fmt, options, listing):
        yield offset, batch
        offset += batch.num_rows


def _record_batches(
    uri: str, fmt: str, options: dict | None, listing: ListingFile | None
) -> Iterator[pa.RecordBatch]:
    if fmt == "videos":
        videos = list_videos(uri, options)
        for batch in listing.passing(videos) if listing else videos:
            yield batch.select(["uri"])
        return
    filesystem, path = storage.filesystem(uri, options)
    with filesystem.open(path, "rb") as stream:
        yield from FORMATS[fmt].stream(stream)


def read_dataset(
    section: ManifestSection,
    options: dict | None,
    listing: str | None = None,
    schema: pa.Schema | None = None,
    *,
    num_cpus: float = 0,
    tasks: int | None = None,
):
    """The manifest's rows as a Ray Data dataset (uris as given, no ids yet): a file manifest
    read by Ray Data (a JSON Lines one parsed to `schema`, the scan's, else found here), a
    directory, glob or prefix from its `listing` file (the scan's, so that a run lists once;
    else listed here). Ray Data's reader and the steps after it take `num_cpus` each and run
    at most `tasks` at a time (None: as many as Ray Data likes)."""
    if listing is not None:
        return listing_dataset(listing)
    import ray

    fmt = manifest_format(section, options)
    if fmt == "videos":
        return _listed_dataset(section.uri, options)
    if fmt == "jsonl" and schema is None:
        filesystem, path = storage.filesystem(section.uri, options)
        with filesystem.open(path, "rb") as stream:
            schema = json_lines.file_schema(stream)
    reader = FORMATS[fmt]
    dataset = reader.ray_read(
        section.uri,
        schema,
        filesystem=storage.arrow_filesystem(section.uri, options),
        num_cpus=num_cpus,
        concurrency=tasks,
    )
    if reader.then:
        dataset = dataset.map_batches(
            reader.then,
            batch_format="pyarrow",
            num_cpus=num_cpus,
            compute=ray.data.TaskPoolStrategy(tasks),
        )
    return dataset


def _listed_dataset(uri: str, options: dict | None):
    """A directory, glob or prefix listed now, through a listing file of its own."""
    listing = ListingFile()
    try:
        for _ in listing.passing(list_videos(uri, options)):
            pass
        listing.close()
        return listing_dataset(listing.path)
    finally:
        listing.remove()
