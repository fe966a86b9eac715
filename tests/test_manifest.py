"""Manifest reading and validation, without Ray."""

import pyarrow as pa

from vivit_batch.config import ManifestSection
from vivit_batch.manifest import (
    manifest_format,
    resolve_uri,
    scan_manifest,
    video_id_for,
    with_ids,
)
from vivit_batch.output import RESERVED_COLUMNS


def test_formats_by_extension_and_listing(tmp_path):
    assert manifest_format(ManifestSection("x/m.csv")) == "csv"
    assert manifest_format(ManifestSection("s3://b/m.jsonl")) == "jsonl"
    assert manifest_format(ManifestSection("s3://b/raw/")) == "videos"
    assert manifest_format(ManifestSection("/data/**/*.mp4")) == "videos"
    assert manifest_format(ManifestSection(str(tmp_path))) == "videos"
    assert manifest_format(ManifestSection("m.dat", format="csv")) == "csv"


def test_relative_uris_resolve_against_the_manifest():
    assert resolve_uri("v/a.mp4", "/data/set") == "/data/set/v/a.mp4"
    assert resolve_uri("../a.mp4", "/data/set") == "/data/a.mp4"
    assert resolve_uri("a.mp4", "s3://bucket/set") == "s3://bucket/set/a.mp4"
    assert resolve_uri("/abs/a.mp4", "s3://bucket/set") == "/abs/a.mp4"
    assert resolve_uri("s3://other/a.mp4", "/data") == "s3://other/a.mp4"


def test_ids_are_given_or_a_stable_hash():
    table = pa.table({"uri": ["a.mp4", "b.mp4"], "video_id": ["7", None], "x": [1, 2]})
    out = with_ids(table, "/d")
    assert out.column_names == ["video_id", "uri", "x"]
    assert out.column("video_id").to_pylist() == ["7", video_id_for("/d/b.mp4")]
    assert video_id_for("/d/b.mp4") == video_id_for("/d/b.mp4") != video_id_for("/d/c.mp4")


def test_scan_names_duplicate_rows_and_counts(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,video_id\na.mp4,007\nb.mp4,7\nc.mp4,007\n")
    summary = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS)
    assert summary.rows == 3
    [problem] = summary.problems
    assert "video_id '007' at line 4 (first at line 2)" in problem


def test_scan_txt_manifest_skips_comments(tmp_path):
    manifest = tmp_path / "m.txt"
    manifest.write_text("# header\n\na.mp4\nb.mp4\n")
    summary = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS)
    assert (summary.rows, summary.problems) == (2, [])


def test_scan_refuses_internal_and_repeated_column_names(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,uri,_views,_decode_s,split\na.mp4,b.mp4,1,2,x\n")
    problems = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS).problems
    assert len(problems) == 2
    assert "repeats column names: uri" in problems[0]
    assert "starting with '_': _decode_s, _views" in problems[1]
    assert "rename them" in problems[1]
