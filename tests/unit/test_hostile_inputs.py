"""Hostile inputs cost one error row each, never the job: one run over a corpus of broken, huge,
stalled and crashing files mixed with good videos writes every row with the right code, labels
the good videos exactly as a clean run does, and ends in seconds, not decode.timeout_s. Also the
manifest checks that stop a run before any work: parse errors with line numbers, unsupported URI
schemes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from vivit_batch.config import ManifestSection
from vivit_batch.manifest import scan_manifest
from vivit_batch.output import RESERVED_COLUMNS


def scan(path: Path, text: str | bytes, **section) -> list[str]:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return scan_manifest(ManifestSection(str(path), **section), RESERVED_COLUMNS).problems


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("m.csv", "uri,video_id\na.mp4,1\nb.mp4,2,3\nc.mp4,4\n", "line 3: 3 values for the"),
        ("m.csv", 'uri,video_id\na.mp4,1\n"b.mp4,2\nc.mp4,4\n', "lines 3-4 (a quote left open?)"),
        ("m.csv", b"uri\na.mp4\n\xff\xfe.mp4\n", "line 3: not UTF-8 text"),
        ("m.jsonl", '{"uri": "a.mp4"}\n{"uri": "b.mp4",}\n', "line 2: not valid JSON"),
        ("m.jsonl", '{"uri": "a.mp4"}\n\n[1, 2]\n', "line 3: expected a JSON object, got an"),
        ("m.jsonl", '{"uri": "a", "n": 1}\n{"uri": "b", "n": "x"}\n', "line 2: 'n' is a string"),
        ("m.txt", b"a.mp4\n\xff.mp4\n", "not valid a text file of URIs: line 2: not UTF-8"),
        ("m.parquet", "PAR1 but no", "is not a readable Parquet file"),
    ],
)
def test_malformed_manifests_are_reported_with_line_numbers(tmp_path, name, text, words):
    [problem] = scan(tmp_path / name, text)
    assert words in problem and str(tmp_path / name) in problem


def test_big_csv_reports_the_bad_line_far_down(tmp_path):
    rows = "".join(f"v{i}.mp4,{i}\n" for i in range(100_000))
    [problem] = scan(tmp_path / "m.csv", f"uri,video_id\n{rows}last.mp4\n")
    assert "line 100002: 1 values for the header's 2 columns" in problem


def test_rows_without_a_uri_are_named(tmp_path):
    [problem] = scan(tmp_path / "m.jsonl", '{"uri": "a.mp4"}\n{"video_id": "x"}\n{"uri": " "}\n')
    assert "2 rows with no uri: line 2; line 3" in problem


def test_unsupported_schemes_are_refused_with_the_supported_list(tmp_path):
    text = "uri\na.mp4\nfile:///v.mp4\ns3://b/v.mp4\ns3a://b/v.mp4\ngs://b/v.mp4\nhttps://h/v.mp4\n"
    [problem] = scan(tmp_path / "m.csv", text)
    assert (
        "2 URIs with an unsupported scheme: line 6: 'gs://b/v.mp4'; line 7: 'https://h/v.mp4'"
        in (problem)
    )
    supported = "Supported: local paths, file://, local://, s3://, s3a://; http:// and https://"
    assert supported in problem
    assert "manifest.allow_http=true" in problem
    [problem] = scan(tmp_path / "m.csv", text, allow_http=True)
    assert "1 URIs with an unsupported scheme: line 6: 'gs://b/v.mp4'" in problem
    assert "s3a://, http://, https://" in problem
    [problem] = scan_manifest(ManifestSection("ftp://host/m.csv"), RESERVED_COLUMNS).problems
    assert problem.startswith("manifest ftp://host/m.csv: unsupported URI scheme. Supported:")


def test_uri_checks_leave_the_arrow_types_alone(tmp_path):
    path = tmp_path / "m.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"uri": pa.array(["a.mp4", "b.mp4"], pa.large_string())}), path)
    assert scan_manifest(ManifestSection(str(path)), RESERVED_COLUMNS).problems == []
    pq.write_table(pa.table({"uri": [1, 2]}), path)
    [problem] = scan_manifest(ManifestSection(str(path)), RESERVED_COLUMNS).problems
    assert "'uri' must be text, not int64" in problem
