"""Manifests: which videos to label, their ids, and the columns that pass through to the output.

A manifest is a CSV, JSONL, Parquet or text file (one URI per line) with a `uri` column and an
optional `video_id`, or a directory, glob or prefix of videos. Relative URIs resolve against the
manifest's location. `scan_manifest` checks a manifest in one streaming pass (run it in a Ray task:
it holds only a set of id hashes, never the rows).
"""

from __future__ import annotations

import csv
import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from vivit_batch import storage
from vivit_batch.config import ConfigError, ManifestSection

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
FORMATS_BY_EXTENSION = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}
MAX_LISTED_PROBLEMS = 10
SCHEMES = ("file", "s3", "s3a")
"""URI schemes videos and manifests may have, besides plain local paths."""
HTTP_SCHEMES = ("http", "https")
"""Also accepted with `manifest.allow_http`."""


@dataclass
class ManifestSummary:
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def manifest_format(section: ManifestSection, options: dict | None = None) -> str:
    if section.format != "auto":
        return section.format
    uri = section.uri.rstrip("/")
    if section.uri.endswith("/") or _is_glob(uri) or uri.endswith(VIDEO_EXTENSIONS):
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


def base_directory(section: ManifestSection, options: dict | None = None) -> str:
    """Where relative URIs in the manifest are resolved from."""
    if manifest_format(section, options) == "videos":
        return ""
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
    """Stable id of a resolved URI when the manifest gives none."""
    return hashlib.sha256(uri.encode()).hexdigest()[:20]


def with_ids(table: pa.Table, base: str, skip: pa.Array | None = None) -> pa.Table:
    """Resolve `uri` and fill `video_id` (string) for one block of manifest rows; rows whose id
    is in `skip` (already committed) are dropped."""
    uris = [resolve_uri(u, base) for u in table.column("uri").to_pylist()]
    if "video_id" in table.column_names:
        given = table.column("video_id").cast(pa.string()).to_pylist()
        ids = [v or video_id_for(u) for v, u in zip(given, uris, strict=True)]
        table = table.drop_columns(["video_id"])
    else:
        ids = [video_id_for(u) for u in uris]
    uri_index = table.schema.get_field_index("uri")
    table = table.set_column(uri_index, "uri", pa.array(uris, pa.string()))
    table = table.add_column(0, "video_id", pa.array(ids, pa.string()))
    if skip is not None and len(skip):
        table = table.filter(pa.compute.invert(pa.compute.is_in(table["video_id"], skip)))
    return table


def list_videos(uri: str, options: dict | None = None) -> list[str]:
    """Video files under a directory or prefix, or matching a glob; sorted, with schemes kept."""
    filesystem, path = storage.filesystem(uri, options)
    found = filesystem.glob(path) if _is_glob(path) else filesystem.find(path)
    protocol = (
        filesystem.protocol if isinstance(filesystem.protocol, str) else filesystem.protocol[0]
    )
    prefix = "" if storage.is_local(uri) else f"{protocol}://"
    return sorted(prefix + p for p in found if p.lower().endswith(VIDEO_EXTENSIONS))


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def scan_manifest(
    section: ManifestSection, reserved_columns: set[str], options: dict | None = None
) -> ManifestSummary:
    """One streaming pass: parse errors and URI schemes, column checks, empty manifest, empty
    URIs, duplicate ids (with their rows)."""
    summary = ManifestSummary()
    if not supported_uri(section.uri, section.allow_http):
        summary.problems.append(
            f"manifest {section.uri}: unsupported URI scheme. {supported_schemes(section)}"
        )
        return summary
    fmt = manifest_format(section, options)
    base = base_directory(section, options)
    first_row_of: dict[bytes, int] = {}
    duplicates, empty, unsupported = [], [], []
    try:
        for offset, batch in _batches(section.uri, fmt, options):
            if not summary.columns:
                summary.columns = batch.column_names
                summary.problems += _column_problems(
                    section.uri, batch.column_names, reserved_columns
                )
                if summary.problems:
                    return summary
            kind = batch.schema.field("uri").type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                summary.problems.append(f"manifest {section.uri}: 'uri' must be text, not {kind}")
                return summary
            given = batch.column("uri").to_pylist()
            table = pa.Table.from_batches([batch])
            filled = pa.array([u or "" for u in given], pa.string())
            table = table.set_column(table.schema.get_field_index("uri"), "uri", filled)
            ids = with_ids(table, base).column("video_id").to_pylist()
            for index, (video_id, uri) in enumerate(zip(ids, given, strict=True)):
                key = hashlib.blake2b(video_id.encode(), digest_size=12).digest()
                row = _row_label(fmt, offset + index)
                if not (uri or "").strip():
                    empty.append(row)
                elif not supported_uri(uri.strip(), section.allow_http):
                    unsupported.append(f"{row}: {uri.strip()!r}")
                if key in first_row_of:
                    duplicates.append(
                        f"video_id {video_id!r} at {row} (first at {first_row_of[key]})"
                    )
                else:
                    first_row_of[key] = row
            summary.rows += len(ids)
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        summary.problems.append(_parse_problem(section.uri, fmt, error, options))
        return summary
    if summary.rows == 0:
        summary.problems.append(f"manifest {section.uri} has no rows: nothing to label")
    if empty:
        summary.problems.append(
            f"manifest {section.uri} has {len(empty)} rows with no uri: {_listed(empty)}"
        )
    if unsupported:
        summary.problems.append(
            f"manifest {section.uri} has {len(unsupported)} URIs with an unsupported scheme: "
            f"{_listed(unsupported)}. {supported_schemes(section)}"
        )
    if duplicates:
        summary.problems.append(
            f"manifest {section.uri} has {len(duplicates)} duplicate video ids: "
            f"{_listed(duplicates)}. Each video_id must be unique (drop the repeats or give them "
            "distinct ids)"
        )
    return summary


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


def _listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED_PROBLEMS
    return "; ".join(items[:MAX_LISTED_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


def _parse_problem(uri: str, fmt: str, error: Exception, options: dict | None) -> str:
    """What is wrong with a manifest the reader rejected, with the line where it goes wrong."""
    if fmt == "parquet":
        return f"manifest {uri} is not a readable Parquet file ({error})"
    filesystem, path = storage.filesystem(uri, options)
    with filesystem.open(path, "rb") as stream:
        where = _first_bad_line(stream, fmt)
    kind = {"csv": "CSV", "jsonl": "JSON Lines"}.get(fmt, "a text file of URIs")
    return f"manifest {uri} is not valid {kind}: " + (where or str(error))


def _first_bad_line(stream, fmt: str) -> str | None:
    """'line N: what is wrong' for the first line of a CSV, JSONL or text manifest that cannot
    be read; None when each line is fine on its own."""
    lines = _text_lines(stream)
    try:
        if fmt == "csv":
            return _first_bad_csv_line(lines)
        if fmt == "jsonl":
            return _first_bad_json_line(lines)
        for _ in lines:
            pass
    except _BadLine as bad:
        return str(bad)
    return None


class _BadLine(ValueError):
    pass


def _text_lines(stream) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(stream, 1):
        try:
            yield number, raw.decode()
        except UnicodeDecodeError as error:
            raise _BadLine(f"line {number}: not UTF-8 text ({error.reason})") from error


def _first_bad_csv_line(lines: Iterator[tuple[int, str]]) -> str | None:
    reader = csv.reader(line for _, line in lines)
    header = None
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return None
        except csv.Error as error:
            return f"line {reader.line_num}: {error}"
        if header is None:
            header = record
        elif record and len(record) != len(header):
            where = f"line {start}"
            if reader.line_num > start:
                where = f"lines {start}-{reader.line_num} (a quote left open?)"
            return (
                f"{where}: {len(record)} values for the header's {len(header)} columns; "
                "quote values that contain commas"
            )


def _first_bad_json_line(lines: Iterator[tuple[int, str]]) -> str | None:
    kinds: dict[str, tuple[str, int]] = {}
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number}: not valid JSON ({error.msg} at column {error.colno})"
        if not isinstance(row, dict):
            return f"line {number}: expected a JSON object, got {_json_kind(row)}"
        for key, value in row.items():
            if value is None:
                continue
            kind, first = kinds.setdefault(key, (_json_kind(value), number))
            if kind != _json_kind(value):
                return f"line {number}: {key!r} is {_json_kind(value)}, but {kind} on line {first}"
    return None


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _column_problems(uri: str, columns: list[str], reserved: set[str]) -> list[str]:
    problems = []
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if repeated:
        problems.append(
            f"manifest {uri} repeats column names: {', '.join(repeated)}; give each column a "
            "name of its own"
        )
    internal = sorted({name for name in columns if name.startswith("_")})
    if internal:
        problems.append(
            f"manifest {uri} has columns starting with '_': {', '.join(internal)}; those names "
            "are vivit-batch's own (internal columns), rename them in the manifest"
        )
    if "uri" not in columns:
        problems.append(f"manifest {uri} has no 'uri' column (columns: {', '.join(columns)})")
    collisions = sorted(set(columns) & reserved)
    if collisions:
        problems.append(
            f"manifest {uri} has columns that the output also writes: {', '.join(collisions)}; "
            "rename them in the manifest"
        )
    return problems


def _row_label(fmt: str, index: int) -> str:
    if fmt == "csv":
        return f"line {index + 2}"  # after the header
    if fmt == "jsonl":
        return f"line {index + 1}"
    if fmt == "txt":
        return f"entry {index + 1}"
    return f"row {index}"


def _batches(uri: str, fmt: str, options: dict | None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(row offset, batch) over the manifest, streamed."""
    offset = 0
    for batch in _record_batches(uri, fmt, options):
        yield offset, batch
        offset += batch.num_rows


def _record_batches(uri: str, fmt: str, options: dict | None) -> Iterator[pa.RecordBatch]:
    if fmt == "videos":
        uris = list_videos(uri, options)
        yield pa.RecordBatch.from_pydict({"uri": pa.array(uris, pa.string())})
        return
    filesystem, path = storage.filesystem(uri, options)
    with filesystem.open(path, "rb") as stream:
        if fmt == "csv":
            yield from pa_csv.open_csv(stream, convert_options=CSV_CONVERT)
        elif fmt == "jsonl":
            yield from pa_json.read_json(stream).to_batches()
        elif fmt == "parquet":
            yield from pq.ParquetFile(stream).iter_batches()
        else:
            for lines in _chunks(line.decode() for line in stream):
                yield from drop_blank_lines(pa.table({"text": lines})).to_batches()


def _chunks(lines: Iterator[str], size: int = 65536) -> Iterator[list[str]]:
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


CSV_CONVERT = pa_csv.ConvertOptions(column_types={"video_id": pa.string(), "uri": pa.string()})


def drop_blank_lines(table: pa.Table) -> pa.Table:
    """Text manifests read by Ray Data arrive as a `text` column of raw lines."""
    lines = pc.utf8_trim_whitespace(table.column("text"))
    keep = pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#")))
    return pa.table({"uri": lines}).filter(keep)
