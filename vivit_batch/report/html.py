"""`vivit-batch report OUTPUT --html PATH`: one self-contained page that opens offline.

plotly.js is inlined once (about 4.8 MB, the whole page's weight) and every chart is a plotly
figure; the thumbnails of the top labels' videos are JPEG data: URIs. The page loads no script,
style, font or picture from anywhere. Script errors, should a browser meet any, are shown at the
top of the page instead of leaving charts silently blank.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from string import Template

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from vivit_batch.report.stats import Example, LabelExamples, OutputStats, RunStats
from vivit_batch.report.text import accuracy_line
from vivit_batch.report.thumbnails import Thumbnail

LABELS_SHOWN = 20
TIMELINE_RUNS = 10
CHART_HEIGHT = 380
PLOT_CONFIG = {"displaylogo": False, "responsive": True}  # the logo links to plotly.com


Thumbnails = Mapping[tuple[str, float], Thumbnail]
"""By (uri, at_s) of the stats' examples (`thumbnails.make_thumbnails`)."""


def write_html(stats: OutputStats, path: str, thumbnails: Thumbnails | None = None) -> None:
    Path(path).write_text(render_html(stats, thumbnails), encoding="utf-8")


def render_html(stats: OutputStats, thumbnails: Thumbnails | None = None) -> str:
    return PAGE.substitute(
        title=html.escape(f"vivit-batch report: {stats.output}"),
        output=html.escape(stats.output),
        plotlyjs=get_plotlyjs(),
        facts=facts(stats),
        charts="\n".join(charts(stats)),
        examples=examples_section(stats.examples, thumbnails or {}),
        runs=runs_table(stats.runs),
    )


def facts(stats: OutputStats) -> str:
    items = {
        "rows": str(stats.rows),
        **{f"status {name}": str(n) for name, n in stats.status.items()},
        "distinct labels": str(len(stats.labels)),
        "runs": str(len(stats.runs)),
    }
    if stats.segments:
        items["videos"] = str(stats.segments.videos)
        items["videos with errors"] = str(stats.segments.videos_with_errors)
        items["labelled segments"] = str(stats.segments.segments)
    if stats.accuracy and stats.accuracy.rows:
        items["top-1 accuracy"] = f"{stats.accuracy.top1:.1%}"
        items[f"{stats.accuracy.top5_name} accuracy"] = f"{stats.accuracy.top5:.1%}"
    cells = [
        f'<div class="fact"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
        for k, v in items.items()
    ]
    notes = [accuracy_line(stats.accuracy)] if stats.accuracy else []
    if stats.unfinished_relabel:
        notes.insert(0, f"warning: {stats.unfinished_relabel}")
    paragraphs = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return '<div class="facts">' + "".join(cells) + "</div>" + paragraphs


def charts(stats: OutputStats) -> list[str]:
    sections = [
        section(labels_title(stats), label_chart(stats)),
        section("Top-1 score of labelled rows", score_chart(stats)),
        section("Error codes", error_chart(stats), empty="no error rows"),
        section(
            f"Throughput over time: videos labelled, per run (the last {TIMELINE_RUNS})",
            throughput_chart(stats),
            empty="no labelled rows",
        ),
    ]
    if stats.accuracy:
        title = f"Confusion matrix: {stats.accuracy.truth_column} against the top-1 label"
        sections.append(section(title, confusion_chart(stats), empty="no labelled truth"))
    return sections


def labels_title(stats: OutputStats) -> str:
    title = "Top-1 labels of labelled rows"
    if stats.segments:
        title = "Top-1 labels of labelled segments, in seconds of video"
    if len(stats.labels) > LABELS_SHOWN:
        title += f" (the {LABELS_SHOWN} most frequent of {len(stats.labels)})"
    return title


def section(title: str, figure: go.Figure | None, empty: str = "no rows") -> str:
    body = chart_html(figure) if figure else f'<p class="empty">{html.escape(empty)}</p>'
    return f'<section class="chart"><h2>{html.escape(title)}</h2>{body}</section>'


def chart_html(figure: go.Figure) -> str:
    figure.update_layout(
        template="plotly_white", height=CHART_HEIGHT, margin={"l": 60, "r": 20, "t": 20, "b": 50}
    )
    return pio.to_html(figure, full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)


def label_chart(stats: OutputStats) -> go.Figure | None:
    """Rows by label; seconds of video by label for a segments output."""
    by_label = stats.segments.label_seconds if stats.segments else stats.labels
    shown = list(by_label.items())[:LABELS_SHOWN]
    if not shown:
        return None
    names, values = zip(*reversed(shown), strict=True)  # most frequent at the top
    figure = go.Figure(go.Bar(x=values, y=names, orientation="h"))
    axis = "seconds of video" if stats.segments else "rows"
    return figure.update_layout(xaxis_title=axis, yaxis={"automargin": True})


def score_chart(stats: OutputStats) -> go.Figure | None:
    edges, counts = stats.scores.edges, stats.scores.counts
    if not sum(counts):
        return None
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    figure = go.Figure(go.Bar(x=centres, y=counts, width=edges[1] - edges[0]))
    return figure.update_layout(xaxis_title="score", yaxis_title="rows", xaxis_range=[0, 1])


def error_chart(stats: OutputStats) -> go.Figure | None:
    if not stats.error_codes:
        return None
    figure = go.Figure(go.Bar(x=list(stats.error_codes), y=list(stats.error_codes.values())))
    return figure.update_layout(xaxis_title="error code", yaxis_title="rows")


def throughput_chart(stats: OutputStats) -> go.Figure | None:
    recent = sorted(stats.timelines.items(), key=lambda item: item[1].start)[-TIMELINE_RUNS:]
    if not recent:
        return None
    figure = go.Figure()
    for run_id, timeline in recent:
        minutes = [s / 60 for s in timeline.seconds]
        figure.add_trace(go.Scatter(x=minutes, y=timeline.videos, name=run_id, line_shape="hv"))
    return figure.update_layout(
        xaxis_title="minutes after the run started", yaxis_title="videos labelled"
    )


def confusion_chart(stats: OutputStats) -> go.Figure | None:
    accuracy = stats.accuracy
    if not accuracy or not accuracy.classes:
        return None
    figure = go.Figure(
        go.Heatmap(
            z=accuracy.confusion,
            x=[*accuracy.classes, "(other)"],
            y=accuracy.classes,
            text=accuracy.confusion,
            texttemplate="%{text}",
            colorscale="Blues",
        )
    )
    return figure.update_layout(
        xaxis_title="top-1 label",
        yaxis={"title": accuracy.truth_column, "autorange": "reversed", "automargin": True},
    )


def examples_section(shown: list[LabelExamples], thumbnails: Thumbnails) -> str:
    """Each label's highest- and lowest-scoring videos as thumbnails (empty without examples)."""
    if not shown:
        return ""
    title = (
        f"What the labels look like: the {len(shown)} most frequent, each with its highest- "
        "and lowest-scoring videos (the frame in the middle of the clip or segment)"
    )
    rows = "".join(
        f'<div class="label-examples"><h3>{html.escape(label.label)}</h3>'
        + strip("highest", label.highest, thumbnails)
        + strip("lowest", label.lowest, thumbnails)
        + "</div>"
        for label in shown
    )
    return f'<section class="examples"><h2>{html.escape(title)}</h2>{rows}</section>'


def strip(side: str, examples: list[Example], thumbnails: Thumbnails) -> str:
    if not examples:
        return ""
    figures = "".join(
        figure(example, thumbnails.get((example.uri, example.at_s))) for example in examples
    )
    return f'<div class="strip"><span class="side">{side}</span>{figures}</div>'


def figure(example: Example, thumbnail: Thumbnail | None) -> str:
    """The thumbnail as a data: URI (the page makes no request), else a box saying why not. A
    picture the browser cannot show is reported at the top of the page, as script errors are."""
    where = f"{example.uri} at {example.at_s:.1f} s"
    if thumbnail and thumbnail.jpeg:
        data = base64.b64encode(thumbnail.jpeg).decode()
        picture = (
            f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(example.video_id)}" '
            "onerror=\"showPageError('cannot show the thumbnail of ' + this.alt)\">"
        )
    else:
        problem = thumbnail.problem if thumbnail else "not decoded"
        where += f": {problem}"
        code, _, detail = (problem or "").partition(": ")
        picture = (
            f'<div class="missing"><b>{html.escape(code)}</b>'
            f"<span>{html.escape(detail)}</span></div>"
        )
    caption = f"{example.score:.2f} · {example.video_id} · {example.at_s:.1f} s"
    return (
        f'<figure class="thumb" title="{html.escape(where)}">{picture}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


RUN_COLUMNS = {
    "run": lambda run: run.run_id,
    "started": lambda run: run.started_at,
    "mode": lambda run: run.mode,
    "wall s": lambda run: f"{run.wall_seconds:.1f}",
    "rows": lambda run: run.rows_written,
    "skipped": lambda run: run.skipped_committed,
    "errors": lambda run: run.errors,
    "clips/s": lambda run: "" if run.clips_per_second is None else run.clips_per_second,
    "inference": lambda run: "\n".join(run.devices),
    "warnings": lambda run: "\n".join(run.warnings),
}


def runs_table(runs: list[RunStats]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in RUN_COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(cell(run)))}</td>" for cell in RUN_COLUMNS.values())
        + "</tr>"
        for run in runs
    )
    return f'<table class="runs"><tr>{head}</tr>{body}</table>'


PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 8px; }
.output { color: #555; margin: 0 0 16px; word-break: break-all; }
.facts { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 8px; }
.fact { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 90px; }
.fact b { display: block; font-size: 20px; }
.fact span { color: #666; font-size: 13px; }
/* auto-fill, not auto-fit: each chart is drawn as its box arrives, and must get its column's
   width then (with auto-fit the first box alone spans the row, and plotly keeps that width) */
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.chart { border: 1px solid #ddd; border-radius: 6px; padding: 12px; min-width: 0; }
.empty { color: #888; }
#page-errors { background: #fde8e8; color: #900; padding: 8px; white-space: pre-wrap; }
table.runs { border-collapse: collapse; font-size: 13px; margin-top: 8px; }
table.runs th, table.runs td { border: 1px solid #ddd; padding: 4px 8px; text-align: left;
  white-space: pre-line; }
.examples { border: 1px solid #ddd; border-radius: 6px; padding: 12px; margin-top: 16px; }
.label-examples h3 { font-size: 14px; margin: 12px 0 4px; }
.strip { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px; margin-bottom: 6px; }
.strip .side { width: 56px; color: #666; font-size: 12px; padding-top: 4px; }
.thumb { margin: 0; font-size: 11px; color: #555; max-width: 290px; }
.thumb img { display: block; height: 120px; width: auto; border-radius: 3px; }
.thumb .missing { box-sizing: border-box; width: 160px; height: 120px; padding: 8px;
  overflow: hidden; background: #f1f1f1; border: 1px dashed #bbb; border-radius: 3px; }
.thumb .missing b { display: block; color: #900; }
.thumb .missing span { font-size: 10px; word-break: break-word; }
.thumb figcaption { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
</style>
</head>
<body>
<div id="page-errors" hidden></div>
<script>
function showPageError(message) {
  var box = document.getElementById("page-errors");
  box.hidden = false;
  box.textContent += message + "\\n";
}
window.addEventListener("error", function (event) {
  showPageError("script error: " + event.message);
});
window.addEventListener("unhandledrejection", function (event) {
  showPageError("script error: " + event.reason);
});
</script>
<script>$plotlyjs</script>
<h1>vivit-batch report</h1>
<p class="output">$output</p>
$facts
<div class="charts">
$charts
</div>
$examples
<h2 style="margin-top: 20px">Runs</h2>
$runs
</body>
</html>
""")
