"""Checking a manifest before any work, in one streaming pass that holds only a set of id hashes,
never the rows (`job.prepare` runs it in a process of its own): parse errors with the line where
they happen, column names, empty manifests and URIs, unsupported schemes, duplicate ids,
oversized cells."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch import storage
from vivit_batch.config import ManifestSection
from vivit_batch.manifest.json_lines import schema_text
from vivit_batch.manifest.listing import ListingFile
from vivit_batch.manifest.read import (
    HTTP_SCHEMES,
    SCHEMES,
    base_directory,
    batches,
    manifest_format,
    output_names,
    supported_schemes,
    supported_uri,
    with_ids,
)
from vivit_batch.settings import BYTES, show

MAX_LISTED_PROBLEMS = 10
SAMPLE_VIDEOS = 3
"""The manifest's first videos whose URIs the summary keeps: what the stages' costs are measured
on before the run (`vivit_batch.calibration`)."""


@dataclass
class ManifestSummary:
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    listing: str | None = None
    """A directory, glob or prefix manifest's listing: the local Parquet file the scan wrote
    its videos to, with their versions (`listing.ListingFile`), which the run reads rather
    than listing again; whoever holds the summary removes it (`listing.remove_listing`)."""
    schema: str | None = None
    """A JSON Lines manifest's columns and types over all its rows (`json_lines.schema_text`):
    what the run's reads parse each row to, as the scan did."""
    first_uris: list[str] = field(default_factory=list)
    """the first `SAMPLE_VIDEOS` videos' URIs, resolved: what the costs are measured on"""


def scan_manifest(
    section: ManifestSection, reserved_columns: set[str], options: dict | None = None
) -> ManifestSummary:
    """One streaming pass: parse errors and URI schemes, column checks, empty manifest, empty
    URIs, duplicate ids (with their rows), cells over `max_cell_bytes` (with row and column).
    A directory, glob or prefix is listed into a listing file as it streams by
    (`ManifestSummary.listing`; removed here if the manifest has problems)."""
    if not supported_uri(section.uri, section.allow_http):
        problem = f"manifest {section.uri}: unsupported URI scheme. {supported_schemes(section)}"
        return ManifestSummary(problems=[problem])
    fmt = manifest_format(section, options)
    listing = ListingFile() if fmt == "videos" else None
    try:
        summary = _scan(section, fmt, reserved_columns, options, listing)
    except BaseException:
        if listing:
            listing.remove()
        raise
    if listing and summary.problems:
        listing.remove()
    elif listing:
        listing.close()
        summary.listing = listing.path
    return summary


def _scan(
    section: ManifestSection,
    fmt: str,
    reserved_columns: set[str],
    options: dict | None,
    listing: ListingFile | None,
) -> ManifestSummary:
    summary = ManifestSummary()
    base = base_directory(section)
    seen = SeenIds()
    empty, unsupported, oversized = [], [], []
    try:
        for offset, batch in batches(section.uri, fmt, options, listing):
            if not summary.columns:
                summary.columns = batch.column_names
                summary.schema = schema_text(batch.schema) if fmt == "jsonl" else None
                summary.problems += _column_problems(
                    section.uri,
                    output_names(batch.column_names, section.column_prefix),
                    reserved_columns,
                )
                if summary.problems:
                    return summary
            kind = batch.schema.field("uri").type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                summary.problems.append(f"manifest {section.uri}: 'uri' must be text, not {kind}")
                return summary
            oversized += _oversized_cells(batch, section.max_cell_bytes, fmt, offset)
            resolved = _resolved(pa.Table.from_batches([batch]), base, section)
            trimmed = pc.utf8_trim_whitespace(pc.fill_null(batch.column("uri"), ""))
            missing = SAMPLE_VIDEOS - len(summary.first_uris)
            if missing > 0:
                given = resolved["uri"].filter(pc.not_equal(trimmed, ""))
                summary.first_uris += given.slice(0, missing).to_pylist()
            empty += [_row_label(fmt, offset + row) for row in _rows(pc.equal(trimmed, ""))]
            unsupported += [
                f"{_row_label(fmt, offset + row)}: {trimmed[row].as_py()!r}"
                for row in _rows(_unsupported(trimmed, section.allow_http))
            ]
            seen.add(resolved.column("video_id"))
            summary.rows += batch.num_rows
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
    if oversized:
        summary.problems.append(
            f"manifest {section.uri} has {len(oversized)} value(s) larger than "
            f"manifest.max_cell_bytes ({show(section.max_cell_bytes, BYTES)}): "
            f"{_listed(oversized)}. Each is repeated on every output row of its video (every "
            "segment's, in segments mode): keep large data elsewhere and give its key or path "
            "in the manifest, or raise manifest.max_cell_bytes"
        )
    repeats = _repeats(seen.candidates(), section, fmt, options)
    if len(repeats):
        duplicates = _described_repeats(repeats, section, fmt, options)
        summary.problems.append(
            f"manifest {section.uri} has {len(repeats)} duplicate video ids: "
            f"{_listed(duplicates, len(repeats))}. Each video_id must be unique (drop the repeats "
            "or give them distinct ids)"
        )
    return summary


class SeenIds:
    """Every id of the manifest as a 64-bit hash, 8 bytes a row (not the ids, not a Python
    object a row): what finds the rows that may repeat an id, whatever the manifest's length.
    Their ids' 128-bit hashes, taken in a second pass over those rows only, decide
    (`_repeats`)."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, ids: pa.ChunkedArray) -> None:
        self._hashes.append(id_hashes(ids.to_pylist(), 8).ravel())

    def candidates(self) -> np.ndarray:
        """The rows whose hash another row has, ascending: every row of a repeated id, and
        rarely (2^-64 a pair of rows) one whose id only shares the hash."""
        hashes = np.concatenate(self._hashes) if self._hashes else np.empty(0, np.uint64)
        self._hashes = []
        ordered = np.sort(hashes)
        shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not len(shared):
            return np.empty(0, np.int64)
        at = np.searchsorted(shared, hashes)
        np.minimum(at, len(shared) - 1, out=at)
        return np.flatnonzero(shared[at] == hashes)


def id_hashes(ids: list[str], size: int) -> np.ndarray:
    """(len(ids), size / 8) uint64: each id's blake2b hash of `size` bytes."""
    digests = b"".join(hashlib.blake2b(i.encode(), digest_size=size).digest() for i in ids)
    return np.frombuffer(digests, np.uint64).reshape(len(ids), size // 8)


def _repeats(
    candidates: np.ndarray, section: ManifestSection, fmt: str, options: dict | None
) -> np.ndarray:
    """(row, first row with the same id) for each row whose id an earlier row has, in row
    order: the `candidates`' ids hashed again to 128 bits (a second pass over the manifest,
    only when some rows share a 64-bit hash)."""
    if not len(candidates):
        return np.empty((0, 2), np.int64)
    hashes = np.empty((len(candidates), 2), np.uint64)
    for start, ids in _ids_of_rows(candidates, section, fmt, options):
        hashes[start : start + len(ids)] = id_hashes(ids, 16)
    order = np.lexsort((hashes[:, 1], hashes[:, 0]))  # stable: equal ids in row order
    ordered = hashes[order]
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (ordered[1:] == ordered[:-1]).all(axis=1)
    first = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(order))))
    pairs = candidates[np.stack([order[repeat], order[first[repeat]]], axis=1)]
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def _described_repeats(
    repeats: np.ndarray, section: ManifestSection, fmt: str, options: dict | None
) -> list[str]:
    """'video_id 'x' at line 3 (first at line 2)' for the first `MAX_LISTED_PROBLEMS` repeats:
    their ids read again from the manifest (one more pass, only when it has repeats)."""
    listed = repeats[:MAX_LISTED_PROBLEMS]
    wanted = np.unique(listed[:, 0])
    ids: dict[int, str] = {}
    for start, found in _ids_of_rows(wanted, section, fmt, options):
        ids.update(zip(wanted[start : start + len(found)].tolist(), found, strict=True))
    return [
        f"video_id {ids[int(row)]!r} at {_row_label(fmt, int(row))} "
        f"(first at {_row_label(fmt, int(first))})"
        for row, first in listed
    ]


def _ids_of_rows(
    rows: np.ndarray, section: ManifestSection, fmt: str, options: dict | None
) -> Iterator[tuple[int, list[str]]]:
    """The ids of the manifest's `rows` (ascending), read again: (position in `rows` of the
    first, ids) a batch at a time, until the last row is read."""
    base = base_directory(section)
    for offset, batch in batches(section.uri, fmt, options):
        start, end = np.searchsorted(rows, [offset, offset + batch.num_rows])
        if start < end:
            table = pa.Table.from_batches([batch]).take(rows[start:end] - offset)
            yield int(start), _resolved(table, base, section).column("video_id").to_pylist()
        if end == len(rows):
            return


def _resolved(table: pa.Table, base: str, section: ManifestSection) -> pa.Table:
    """`table`'s rows with resolved URIs and ids, a missing URI read as empty (the scan reports
    it as such)."""
    uris = pc.fill_null(table["uri"], "")
    table = table.set_column(table.schema.get_field_index("uri"), "uri", uris)
    return with_ids(table, base, prefix=section.column_prefix)


def _rows(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The positions where `mask` is true."""
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def _unsupported(uris: pa.Array, allow_http: bool) -> pa.Array:
    """Whether each of `uris` has a scheme this job does not read (`supported_uri`)."""
    schemes = pc.utf8_lower(pc.list_element(pc.split_pattern(uris, "://", max_splits=1), 0))
    accepted = pa.array(SCHEMES + (HTTP_SCHEMES if allow_http else ()))
    return pc.and_(pc.match_substring(uris, "://"), pc.invert(pc.is_in(schemes, accepted)))


def _oversized_cells(batch: pa.RecordBatch, limit: int, fmt: str, offset: int) -> list[str]:
    """'line N, column 'name' (B bytes)' for each value of `batch` over `limit` bytes, row by
    row."""
    found = [
        (int(row), f"column {name!r} ({sizes[row]} bytes)")
        for name, column in zip(batch.column_names, batch.columns, strict=True)
        for sizes in [_value_bytes(column)]
        for row in np.flatnonzero(sizes > limit)
    ]
    found.sort(key=lambda cell: cell[0])  # stable: columns in order within a row
    return [f"{_row_label(fmt, offset + row)}, {cell}" for row, cell in found]


def _value_bytes(values: pa.Array) -> np.ndarray:
    """The bytes each value of `values` holds: text and binary as stored, lists and objects
    summed over their items, nulls 0."""
    kind = values.type
    if pa.types.is_primitive(kind) or pa.types.is_decimal(kind):
        return np.full(len(values), kind.bit_width // 8)
    if any(is_kind(kind) for is_kind in _BYTE_STRINGS):
        return _filled(pc.binary_length(values))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        summed = np.concatenate([[0], np.cumsum(_value_bytes(values.flatten()))])
        lengths = _filled(pc.list_value_length(values))
        ends = np.cumsum(lengths)
        return summed[ends] - summed[ends - lengths]
    if pa.types.is_struct(kind):
        fields = (_value_bytes(field) for field in values.flatten())
        return sum(fields, np.zeros(len(values), np.int64))
    if pa.types.is_dictionary(kind):
        return _value_bytes(values.dictionary_decode())
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        return _value_bytes(values.cast(pa.large_binary()))
    return np.array([values.slice(row, 1).nbytes for row in range(len(values))])


_BYTE_STRINGS = (
    pa.types.is_binary,
    pa.types.is_string,
    pa.types.is_large_binary,
    pa.types.is_large_string,
    pa.types.is_fixed_size_binary,
)


def _filled(counts: pa.Array) -> np.ndarray:
    return counts.fill_null(0).to_numpy().astype(np.int64)


def _listed(items: list[str], count: int | None = None) -> str:
    """The first `MAX_LISTED_PROBLEMS` of `items`, and how many more of `count` (all of them:
    `len(items)`) there are."""
    more = (len(items) if count is None else count) - MAX_LISTED_PROBLEMS
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
            "are vivit-batch's own (internal columns): rename them in the manifest, or keep "
            "them under a prefix with --set manifest.column_prefix=manifest_"
        )
    if "uri" not in columns:
        problems.append(f"manifest {uri} has no 'uri' column (columns: {', '.join(columns)})")
    collisions = sorted(set(columns) & reserved)
    if collisions:
        problems.append(
            f"manifest {uri} has columns that the output also writes: {', '.join(collisions)}; "
            "rename them in the manifest, or keep them under a prefix with --set "
            f"manifest.column_prefix=manifest_ ({collisions[0]} becomes manifest_{collisions[0]})"
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
