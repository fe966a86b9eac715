"""`vivit-batch report`: text, JSON and HTML from an output written with the real sink (no Ray),
accuracy against a truth column, one-line errors for paths that are not outputs, thumbnails
decoded from real encoded videos (placeholders for missing and broken ones), and the HTML page
rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image

from tests.helpers.outputs import (
    HIDDEN,
    SEGMENT_SECONDS,
    START,
    THUMBNAIL_VIDEOS,
    commit_rows,
    thumbnail_rows,
)
from vivit_batch.cli import main
from vivit_batch.config import StorageSection
from vivit_batch.errors import EXIT_OK, EXIT_USAGE
from vivit_batch.output import Output, RunReport, Unlocked
from vivit_batch.output.runs import RELABEL_MODE, Throughput
from vivit_batch.output.schema import (
    output_schema,
)
from vivit_batch.report import output_stats, summary_text
from vivit_batch.report.html import render_html
from vivit_batch.storage import storage_options
from vivit_batch.testing.media import read_index, write_video


def test_stats_count_rows_and_judge_against_the_truth(output):
    stats = output_stats(output.uri, truth_column="truth")
    assert (stats.rows, stats.status) == (10, {"ok": 7, "error": 3})
    assert stats.error_codes == {"unreadable": 2, "timeout": 1}
    assert stats.labels == {"bird": 2, "cat": 2, "dog": 2, "fish": 1}
    assert sum(stats.scores.counts) == 7 and stats.scores.counts[:6] == [0] * 6  # all >= 0.3
    assert [run.run_id for run in stats.runs] == ["night1", "night2"]
    assert stats.runs[0].errors == 2 and "cpu EPYC" in stats.runs[0].devices[0]
    night1 = stats.timelines["night1"]  # six rows, one every 20 s from the start
    assert (night1.seconds, night1.videos) == ([0, 0, 20, 40, 60, 80, 100], [0, 1, 2, 3, 4, 5, 6])
    accuracy = stats.accuracy
    assert accuracy is not None
    assert (accuracy.rows, accuracy.top1, accuracy.top5) == (6, 0.6667, 0.8333)
    assert accuracy.top5_name == "top-3"  # rows keep three labels
    assert accuracy.classes == ["cat", "dog", "bird"]
    # predicted: cat, dog, bird, (other)
    assert accuracy.confusion == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]


def test_text_and_json_reports(output, capsys):
    assert main(["report", output.uri, "--truth-column", "truth"]) == EXIT_OK
    text = capsys.readouterr().out
    assert f"{output.uri}: 10 rows" in text and "errors: unreadable 2, timeout 1" in text
    assert "accuracy against truth (6 labelled rows): top-1 66.7%, top-3 83.3%" in text
    assert main(["report", output.uri, "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 10 and report["accuracy"] is None
    assert report["status"] == {"ok": 7, "error": 3}
    assert [run["run_id"] for run in report["runs"]] == ["night1", "night2"]


def test_a_segments_output_counts_labels_in_seconds_of_video(segments_output):
    stats = output_stats(segments_output.uri)
    assert (stats.rows, stats.status) == (10, {"ok": 9, "error": 1})
    assert stats.labels == {"dog": 4, "cat": 3, "bird": 2}  # segments
    segments = stats.segments
    assert segments is not None
    assert (segments.videos, segments.segments, segments.videos_with_errors) == (4, 9, 1)
    assert list(segments.label_seconds.items()) == list(SEGMENT_SECONDS.items())


def test_segments_text_json_and_html_reports(segments_output, capsys):
    assert main(["report", segments_output.uri]) == EXIT_OK
    text = capsys.readouterr().out
    assert "  segments: 4 videos (1 with errors), 9 labelled segments\n" in text
    assert "  errors: unreadable 1\n" in text
    top = "  top labels (3 distinct), in seconds of video:\n" + "".join(
        f"    {seconds:>8.1f}  {label}\n" for label, seconds in SEGMENT_SECONDS.items()
    )
    assert top in text  # 12.0 dog, 9.5 cat, 5.0 bird
    assert main(["report", segments_output.uri, "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["segments"] == {
        "videos": 4,
        "segments": 9,
        "videos_with_errors": 1,
        "label_seconds": SEGMENT_SECONDS,
    }
    page = render_html(output_stats(segments_output.uri))
    assert "Top-1 labels of labelled segments, in seconds of video" in page
    assert '"title":{"text":"seconds of video"}' in page
    assert '"x":[5.0,9.5,12.0]' in page  # the label chart's bars, most seconds at the top


def test_a_per_video_output_reports_as_before(output, capsys):
    assert output_stats(output.uri).segments is None
    assert main(["report", output.uri]) == EXIT_OK
    head = f"""{output.uri}: 10 rows
  status: {{'ok': 7, 'error': 3}}
  errors: unreadable 2, timeout 1
  top labels (4 distinct):
           2  bird
           2  cat
           2  dog
           1  fish
  runs:
"""
    assert capsys.readouterr().out.startswith(head)
    page = render_html(output_stats(output.uri))
    assert "Top-1 labels of labelled rows" in page and "seconds of video" not in page
    assert '"title":{"text":"rows"}' in page and '"x":[1,2,2,2]' in page


def test_runs_show_the_figures_their_reports_have_and_relabel_runs_their_rows_and_time(output):
    """A run without throughput figures (the fixture's), one that decoded nothing, and a
    relabel: no `None` in the text or on the page."""
    later = START + timedelta(days=2)
    nothing_decoded = Throughput(clips_per_second=0.0)  # no stage was busy: no stage figures
    output.write_report(
        RunReport(
            "night3", later.isoformat(), 1.5, skipped_committed=10, throughput=nothing_decoded
        ),
        Unlocked(),
    )
    relabel = RunReport(
        "relabel1",
        (later + timedelta(hours=1)).isoformat(),
        0.4,
        mode=RELABEL_MODE,
        rows_written=10,
        counts={"status": {"ok": 7, "error": 3}},
    )
    output.write_report(relabel, Unlocked())
    stats = output_stats(output.uri)
    text = summary_text(stats)
    runs = text[text.index("  runs:\n") :]
    assert runs.splitlines()[1::2] == [  # each run's line, then its device line
        "    night1: 6 rows, 120.0 s",
        "    night2: 4 rows, 80.0 s",
        "    night3: 0 rows, 1.5 s, 0.0 clips/s",
    ]
    assert runs.endswith("\n    relabel1: relabel, 10 rows, 0.4 s") and "None" not in runs
    table = render_html(stats).split('<table class="runs">')[1].split("</table>")[0]
    rows = {
        cells[0]: cells[2:]  # from the mode on
        for cells in (re.findall(r"<td>(.*?)</td>", row) for row in table.split("<tr>")[2:])
    }
    assert rows["night3"] == ["incremental", "1.5", "0", "10", "0", "0.0", "", ""]
    assert rows["relabel1"] == ["relabel", "0.4", "10", "0", "3", "", "", ""]
    assert "None" not in table


def test_an_output_with_no_rows_reports_zero(tmp_path, capsys):
    output = Output(str(tmp_path / "out"))
    output.create()
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    assert main(["report", output.uri, "--html", str(tmp_path / "r.html")]) == EXIT_OK
    assert f"{output.uri}: 0 rows" in capsys.readouterr().out
    assert 'class="empty"' in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    "path, truth, expected",
    [
        ("nowhere", "truth", "no such output"),
        (".", "truth", "is not a vivit-batch output (it has no _dataset.json)"),
        (
            "out",
            "nope",
            "--truth-column nope: the output has no such manifest column; it has truth",
        ),
        ("out", "label", "--truth-column label: the output has no such manifest column"),
    ],
)
def test_what_is_not_an_output_is_one_line_and_exit_2(
    output, tmp_path, capsys, path, truth, expected
):
    (tmp_path / "notes.txt").write_text("not Parquet")
    assert main(["report", str(tmp_path / path), "--truth-column", truth]) == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert expected in line


@dataclass
class Shown:
    video_id: str
    picture: Image.Image | None
    problem: str | None
    """the placeholder's error code"""


def thumbnails_on(page: str) -> dict[str, list[Shown]]:
    """The page's thumbnails by label, in order."""
    section = page.split('<section class="examples">', 1)[1].split("</section>", 1)[0]
    shown: dict[str, list[Shown]] = {}
    for label, body in re.findall(r"<h3>(.*?)</h3>(.*?)(?=<h3>|$)", section, re.DOTALL):
        shown[label] = [
            Shown(
                video_id,
                Image.open(io.BytesIO(base64.b64decode(data))) if data else None,
                problem or None,
            )
            for data, problem, video_id in re.findall(
                r'<figure class="thumb"[^>]*>(?:<img src="data:image/jpeg;base64,([^"]+)"[^>]*>'
                r'|<div class="missing"><b>([^<]*)</b>.*?</div>)<figcaption>[^<]* · ([^<]*) · ',
                body,
            )
        ]
    return shown


def test_thumbnails_show_each_labels_highest_and_lowest_scoring_videos(
    video_output, tmp_path, capsys
):
    page = tmp_path / "report.html"
    assert main(["report", video_output.uri, "--html", str(page), "--thumbnails", "1"]) == 0
    assert "thumbnails: 2 of 4 frames decoded from their sources" in capsys.readouterr().err
    shown = thumbnails_on(page.read_text())
    assert list(shown) == ["cat", "dog"]  # the most frequent first
    assert [(s.video_id, s.problem) for s in shown["cat"]] == [("v0", None), ("v1", None)]
    assert [(s.video_id, s.problem) for s in shown["dog"]] == [
        ("v2", "not_found"),
        ("v3", "unreadable"),
    ]
    for thumbnail, frame in zip(shown["cat"], [15, 6], strict=True):
        picture = thumbnail.picture
        assert picture is not None and picture.format == "JPEG"
        assert picture.size == (213, 160)  # 64x48 to a 160-pixel short side
        assert read_index(np.asarray(picture.convert("RGB"))) == frame  # mid-clip
    assert_loads_nothing_from_elsewhere(page.read_text())


def test_thumbnails_of_s3_sources_use_the_storage_settings_given(s3_server, tmp_path):
    """An output and its videos on S3 (moto): `--set storage.endpoint_url` reaches both the
    report's reading and the decoding process."""
    bucket = f"report-{uuid.uuid4().hex[:12]}"
    s3_server.filesystem().mkdir(bucket)
    video = write_video(tmp_path / "v0.mp4", num_frames=30, width=64, height=48, fps=30)
    s3_server.filesystem().put(str(video), f"{bucket}/videos/v0.mp4")
    output = Output(
        f"s3://{bucket}/out", storage_options(StorageSection(endpoint_url=s3_server.endpoint_url))
    )
    output.create()
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    rows = thumbnail_rows({"v0": THUMBNAIL_VIDEOS["v0"]}, [f"s3://{bucket}/videos/v0.mp4"])
    commit_rows(output, rows, output_schema(HIDDEN), START)
    page = tmp_path / "report.html"
    endpoint = f"storage.endpoint_url={s3_server.endpoint_url}"
    assert main(["report", output.uri, "--html", str(page), "--set", endpoint]) == 0
    [thumbnail] = thumbnails_on(page.read_text())["cat"]
    assert thumbnail.picture is not None, thumbnail.problem
    assert read_index(np.asarray(thumbnail.picture.convert("RGB"))) == 15


def test_examples_are_one_per_video_in_a_segments_output(segments_output):
    examples = output_stats(segments_output.uri, examples=3).examples
    assert [(e.label, [x.video_id for x in e.highest], e.lowest) for e in examples] == [
        ("dog", ["clip-1", "clip-2"], []),  # all score 0.75: ties by video id
        ("cat", ["clip-1", "clip-3"], []),
        ("bird", ["clip-2"], []),
    ]


def test_thumbnails_0_decodes_nothing(video_output, tmp_path, capsys):
    page = tmp_path / "report.html"
    arguments = ["report", video_output.uri, "--html", str(page), "--thumbnails", "0", "--json"]
    assert main(arguments) == 0
    assert "<img" not in page.read_text() and 'class="examples"' not in page.read_text()
    printed = capsys.readouterr()
    assert json.loads(printed.out)["examples"] == []
    assert f"wrote {page}" in printed.err and "thumbnails:" not in printed.err


def test_the_html_page_loads_nothing_from_elsewhere(output):
    page = render_html(output_stats(output.uri, truth_column="truth"))
    assert_loads_nothing_from_elsewhere(page)
    assert page.count("* plotly.js v") == 1  # its banner: inlined once, not per chart
    assert page.count("Plotly.newPlot(") == 5
    assert 'id="page-errors" hidden' in page


def assert_loads_nothing_from_elsewhere(page: str) -> None:
    """No tag outside the scripts' code refers to another host, no script has a `src`, no
    style imports anything. (plotly.js's code names hosts for map tiles, which these charts
    never use, and for its logo, which the page turns off.)"""
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.DOTALL | re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", markup, re.IGNORECASE)
    assert not re.search(r"url\(\s*[\"']?(https?:)?//|@import", markup, re.IGNORECASE)
