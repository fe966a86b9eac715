"""Manifest reading and validation, without Ray."""

import json

import numpy as np
import pyarrow as pa

from vivit_batch.cli import main
from vivit_batch.config import ManifestSection
from vivit_batch.manifest import (
    check,
    manifest_format,
    resolve_uri,
    scan_manifest,
    video_id_for,
    with_ids,
)
from vivit_batch.output import RESERVED_COLUMNS
from vivit_batch.testing.checkpoints import make_checkpoint


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


def test_scan_counts_every_repeat_across_batches_and_names_the_first_ones(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [f"v{row}.mp4,{row % 70_000}" for row in range(100_000)]  # batches of 64k lines
    manifest.write_text("uri,video_id\n" + "\n".join(rows) + "\nlast.mp4,6\n")
    [problem] = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS).problems
    assert problem.startswith(
        f"manifest {manifest} has 30001 duplicate video ids: "
        "video_id '0' at line 70002 (first at line 2); video_id '1' at line 70003"
    )
    assert "; and 29991 more." in problem


def test_ids_that_only_share_the_first_hash_are_not_repeats(tmp_path, monkeypatch):
    """The scan keeps 8 bytes of hash a row; rows that share them are checked again with 16.
    Here every id shares the first hash (as two ids would, rarely, at hundreds of millions of
    rows): only the real repeat is reported, with its rows."""
    real = check.id_hashes
    monkeypatch.setattr(
        check,
        "id_hashes",
        lambda ids, size: real(ids, 16) if size == 16 else np.zeros((len(ids), 1), np.uint64),
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,video_id\na.mp4,x\nb.mp4,y\nc.mp4,z\nd.mp4,y\ne.mp4,w\n")
    [problem] = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS).problems
    assert problem.startswith(
        f"manifest {manifest} has 1 duplicate video ids: video_id 'y' at line 5 (first at line 3)"
    )


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


def test_scan_refuses_cells_over_the_limit_naming_row_and_column(tmp_path):
    manifest = tmp_path / "m.csv"
    big = "x" * 2**20
    manifest.write_text(f"uri,notes,tag\na.mp4,short,t\nb.mp4,{big},t\nc.mp4,ok,{big}\n")
    [problem] = scan_manifest(ManifestSection(str(manifest)), RESERVED_COLUMNS).problems
    assert "has 2 value(s) larger than manifest.max_cell_bytes (64KiB)" in problem
    assert "line 3, column 'notes' (1048576 bytes); line 4, column 'tag' (1048576 bytes)" in problem
    assert "raise manifest.max_cell_bytes" in problem
    raised = ManifestSection(str(manifest), max_cell_bytes=2**20)
    assert scan_manifest(raised, RESERVED_COLUMNS).problems == []


def test_cell_sizes_count_what_a_value_holds(tmp_path):
    """Lists and objects are summed over their items; a URI is a cell like any other."""
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"uri": "a.mp4", "meta": {"tags": ["x" * 60, "y" * 60], "n": 1}},
        {"uri": "b" * 200 + ".mp4", "meta": {"tags": [], "n": 2}},
        {"uri": "c.mp4", "meta": None},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    section = ManifestSection(str(manifest), max_cell_bytes=100)
    [problem] = scan_manifest(section, RESERVED_COLUMNS).problems
    assert "line 1, column 'meta' (128 bytes); line 2, column 'uri' (204 bytes)." in problem


def test_a_run_with_a_1_mib_cell_exits_2_at_the_scan(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    make_checkpoint(checkpoint)
    manifest = tmp_path / "m.jsonl"
    rows = [{"uri": "a.mp4", "caption": "fine"}, {"uri": "b.mp4", "caption": "x" * 2**20}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    arguments = ["--manifest", str(manifest), "--output", str(tmp_path / "out")]
    assert main(["run", *arguments, "--model", str(checkpoint)]) == 2
    printed = capsys.readouterr().err
    assert "line 2, column 'caption' (1048576 bytes)" in printed
    assert "manifest.max_cell_bytes (64KiB)" in printed
    assert "Traceback" not in printed
    assert not (tmp_path / "out").exists()
