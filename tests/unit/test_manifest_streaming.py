"""Manifests streamed, without Ray: a JSON Lines file read a MiB at a time, and the listings of
directories, globs and S3 prefixes a page at a time, in sorted order, into the listing file that
the run reads."""

from __future__ import annotations

import io
import json
import tempfile
import tracemalloc
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from tests.helpers.s3 import tally
from vivit_batch.config import ManifestSection, StorageSection
from vivit_batch.manifest import json_lines, scan_manifest
from vivit_batch.manifest.listing import PAGE_ROWS, VIDEO_EXTENSIONS, list_videos
from vivit_batch.output import RESERVED_COLUMNS
from vivit_batch.source_versions import version_of
from vivit_batch.storage import storage_options
from vivit_batch.testing.scans import measured_scan

ROWS = 200_000
BUCKET = "streamed"
TREE = (  # names whose sorted order is not a walk's unless each folder sorts "name/"
    "a.mp4",
    "a-b.mp4",
    "a/x.mp4",
    "a/y/z.mov",
    "a.b/c.mp4",
    "b/notes.txt",
    "B.MP4",
    "c/d/e/f.mkv",
    "é.mp4",
    "v1.mp4",
    "vs/v2.mp4",
)
VIDEOS = sum(name.lower().endswith(VIDEO_EXTENSIONS) for name in TREE)
PATTERNS = ("", "*.mp4", "**/*.mp4", "*/*", "a*", "[ab]*/*.mp4", "v*", "**")


def write_jsonl(path: Path, caption_bytes: int) -> Path:
    with path.open("w") as manifest:
        for i in range(ROWS):
            row = {"uri": f"videos/{i:07d}.mp4"}
            if caption_bytes:
                row["caption"] = f"{i} " + "c" * caption_bytes
            manifest.write(json.dumps(row) + "\n")
    return path


def test_a_jsonl_manifest_of_200k_rows_is_scanned_in_memory_that_does_not_grow_with_its_bytes(
    tmp_path,
):
    """Two manifests of 200,000 rows, one 100 MB larger (a caption per row), scanned as a run
    scans them (a process of its own): the peak memory grows with the rows (the id hashes), not
    with the bytes. A whole-file read held all the rows at once: +173 MiB here."""
    thin = write_jsonl(tmp_path / "thin.jsonl", 0)
    fat = write_jsonl(tmp_path / "fat.jsonl", 500)
    scans = [measured_scan(ManifestSection(str(path))) for path in (thin, fat)]
    assert [(s.summary.rows, s.summary.problems) for s in scans] == [(ROWS, [])] * 2
    extra_bytes = fat.stat().st_size - thin.stat().st_size
    assert extra_bytes > 100 * 10**6
    assert scans[1].peak_rss_bytes - scans[0].peak_rss_bytes < extra_bytes / 4


def test_jsonl_rows_that_change_shape_read_as_a_whole_file_read_has_them():
    """A field null at first, a number with a fraction later, a date that turns out to be text,
    an object with more fields, a new column, a row without any: each chunk is parsed to the
    types of the whole file."""
    first = {"uri": "a.mp4", "n": 1, "c": None, "d": "2024-01-01", "m": {"a": 1}}
    later = {"uri": "b.mp4", "n": 1.5, "c": "text", "d": "unknown", "m": {"b": "x"}, "new": [1]}
    rows = [first] * 40_000 + [later, {"uri": "c.mp4"}, {}]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode() + b"\n\n"
    batches = list(json_lines.stream_batches(io.BytesIO(data)))
    assert len(batches) > 1 and len(data) > json_lines.CHUNK_BYTES
    whole = pa_json.read_json(io.BytesIO(data))
    assert pa.Table.from_batches(batches).equals(whole)
    assert whole.schema.field("d").type == pa.string()
    assert json_lines.schema_of(json_lines.schema_text(whole.schema)) == whole.schema


def test_a_value_whose_type_changes_after_the_first_chunk_is_named_with_its_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = 50_000
    rows = [{"uri": f"{i}.mp4", "n": i} for i in range(lines)] + [{"uri": "x.mp4", "n": "x"}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert manifest.stat().st_size > 1.5 * json_lines.CHUNK_BYTES
    [problem] = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS).problems
    assert f"line {lines + 1}: 'n' is a string, but a number on line 1" in problem


def listed(uri: str, options: dict | None = None) -> list[dict]:
    return [row for batch in list_videos(uri, options) for row in batch.to_pylist()]


def as_fsspec_lists(filesystem, path: str, scheme: str = "") -> list[dict]:
    """What a listing held before it streamed: fsspec's `glob` or `find`, sorted."""
    glob = any(ch in path for ch in "*?[")
    found = (filesystem.glob if glob else filesystem.find)(path, detail=True)
    return [
        {"uri": scheme + name, **version_of(info)}
        for name, info in sorted(found.items())
        if name.lower().endswith(VIDEO_EXTENSIONS) and info["type"] != "directory"
    ]


def test_a_directory_of_many_files_is_listed_in_sorted_order_a_folder_at_a_time(tmp_path):
    """10,000 files (5,000 in one folder, the rest in 25 folders): the listing holds one
    folder's names and a page of videos (1.1 MiB here); fsspec's whole listing held 9.3 MiB."""
    for name in [f"top/{i:05d}.mp4" for i in range(5_000)] + [
        f"sub{i:02d}/{j:03d}.mp4" for i in range(25) for j in range(200)
    ]:
        path = tmp_path / "videos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    root = str(tmp_path / "videos")
    tracemalloc.start()
    try:
        count = sum(page.num_rows for page in list_videos(root))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 10_000 and peak < 3 * 2**20
    assert listed(root) == as_fsspec_lists(fsspec.filesystem("file"), root)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_local_globs_keep_fsspecs_rules_in_sorted_order(tmp_path, pattern):
    for name in TREE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    path = f"{tmp_path}/{pattern}"
    assert listed(path) == as_fsspec_lists(fsspec.filesystem("file"), path.rstrip("/"))


@pytest.fixture(scope="module")
def bucket(s3_server):
    s3_server.filesystem().mkdir(BUCKET)
    keys = [f"raw/{name}" for name in TREE] + ["rawer/q.mp4"]
    s3_server.put_objects(BUCKET, keys + [f"raw/many/{i:05d}.mp4" for i in range(PAGE_ROWS + 200)])
    return s3_server


def test_a_prefix_is_listed_a_page_at_a_time_in_key_order(bucket, proxy):
    options = storage_options(StorageSection(endpoint_url=proxy.endpoint_url))
    pages = list_videos(f"s3://{BUCKET}/raw/many/", options)
    first = next(pages)
    assert first.num_rows == PAGE_ROWS
    assert tally(proxy.requests, BUCKET) == {("LIST", "raw/many/"): 1}  # not the next page yet
    rows = first.to_pylist() + [row for page in pages for row in page.to_pylist()]
    assert tally(proxy.requests, BUCKET) == {("LIST", "raw/many/"): 2}
    assert rows == as_fsspec_lists(bucket.filesystem(), f"{BUCKET}/raw/many", "s3://")
    assert len(rows) == PAGE_ROWS + 200


@pytest.mark.parametrize("pattern", [*PATTERNS, "many/000*.mp4", "*/0100?.mp4"])
def test_s3_globs_keep_fsspecs_rules_in_key_order(bucket, pattern):
    options = storage_options(StorageSection(endpoint_url=bucket.endpoint_url))
    expected = as_fsspec_lists(bucket.filesystem(), f"{BUCKET}/raw/{pattern}", "s3://")
    assert listed(f"s3://{BUCKET}/raw/{pattern}", options) == expected


def test_the_scan_writes_the_listing_to_the_file_the_run_reads(tmp_path, monkeypatch):
    """The scan's file holds the rows the listing gave, versions included; a manifest with
    problems leaves no file behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    for name in TREE:
        (tmp_path / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / name).write_bytes(b"x")
    summary = scan_manifest(ManifestSection(str(tmp_path / "videos")), RESERVED_COLUMNS)
    assert summary.listing is not None and Path(summary.listing).parent == tmp_path / "temp"
    assert pq.read_table(summary.listing).to_pylist() == listed(str(tmp_path / "videos"))
    assert summary.rows == VIDEOS and summary.first_uris == [
        str(tmp_path / "videos" / name) for name in ("B.MP4", "a-b.mp4", "a.b/c.mp4")
    ]
    Path(summary.listing).unlink()

    (tmp_path / "empty").mkdir()
    summary = scan_manifest(ManifestSection(str(tmp_path / "empty")), RESERVED_COLUMNS)
    assert summary.listing is None and "has no rows" in summary.problems[0]
    assert list((tmp_path / "temp").iterdir()) == []
