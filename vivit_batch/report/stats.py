"""What an output holds and how its runs went, computed once for the text, JSON and HTML reports:
`output_stats(uri, truth_column)` reads the committed rows' small columns (never the embeddings)
and the run reports. A segments output (one row per segment of a video) also gets its labels
in seconds of video (`SegmentStats`)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vivit_batch.device_record import summary
from vivit_batch.output import (
    Output,
    RunReport,
    check_truth_column,
    first_per_video,
    unfinished_relabel,
)
from vivit_batch.output.schema import SEGMENT_COLUMNS

ROW_COLUMNS = ["status", "error_code", "label", "score", "topk_labels", "run_id", "processed_at"]
EXAMPLE_COLUMNS = ["video_id", "uri", "clip_start_s", "clip_end_s"]
SCORE_BINS = 20
TIMELINE_POINTS = 100
TOP_ACCURACY = 5
CONFUSION_CLASSES = 10
EXAMPLE_LABELS = 10


@dataclass
class Histogram:
    edges: list[float]
    counts: list[int]


@dataclass
class Timeline:
    """One run's progress: how many of its rows (those still in the output) had been labelled
    by each moment, from the rows' `processed_at`. The slope is the run's throughput."""

    start: str
    """the run's start (its report's `started_at`), else its first row's `processed_at`"""
    seconds: list[float]
    """after `start`"""
    videos: list[int]


@dataclass
class RunStats:
    """One run, from its report."""

    run_id: str
    started_at: str
    mode: str
    wall_seconds: float
    rows_written: int
    skipped_committed: int
    errors: int
    clips_per_second: float | None
    decode_clips_per_second: float | None
    inference_clips_per_second: float | None
    devices: list[str]
    """'N actor(s) on <device summary>' for each kind of device its inference actors used"""
    warnings: list[str]

    @classmethod
    def of(cls, report: RunReport) -> RunStats:
        return cls(
            run_id=report.run_id,
            started_at=report.started_at,
            mode=report.mode,
            wall_seconds=report.wall_seconds,
            rows_written=report.rows_written,
            skipped_committed=report.skipped_committed,
            errors=report.counts.get("status", {}).get("error", 0),
            clips_per_second=report.throughput.clips_per_second,
            decode_clips_per_second=report.throughput.decode_clips_per_second,
            inference_clips_per_second=report.throughput.inference_clips_per_second,
            devices=device_kinds(report),
            warnings=list(dict.fromkeys(report.warnings)),
        )


@dataclass
class Accuracy:
    """Labelled (status ok) rows against a column of true labels; rows without a truth value
    are left out."""

    truth_column: str
    rows: int
    top1: float | None
    top5: float | None
    """the truth among the first five of `topk_labels`, or as many as the run kept"""
    labels_per_row: int
    """how many labels rows keep (model.top_k): top-5 is top-k when it is below 5"""
    classes: list[str]
    """the most frequent true classes, most frequent first"""
    confusion: list[list[int]]
    """[true class][predicted class] counts over `classes`, then a last column for
    predictions outside them"""

    @property
    def top5_name(self) -> str:
        """'top-5', or 'top-k' when rows keep fewer labels"""
        return f"top-{min(TOP_ACCURACY, self.labels_per_row)}"


@dataclass
class SegmentStats:
    """A segments output: one row per labelled segment of a video, one per video in error."""

    videos: int
    segments: int
    """labelled (status ok)"""
    videos_with_errors: int
    label_seconds: dict[str, float]
    """seconds of video by top-1 label, most first; where segments overlap, each second counts
    once (see `owned_seconds`)"""


@dataclass
class Example:
    """A labelled row to show: where the frame in the middle of its clip (or segment) is."""

    video_id: str
    uri: str
    score: float
    at_s: float
    """the middle of its `clip_start_s`..`clip_end_s`, seconds from the video's first frame"""


@dataclass
class LabelExamples:
    """One of the most frequent labels: its highest- and its lowest-scoring videos (for a
    segments output, each video's highest- and lowest-scoring segment of the label), best first
    and worst first; a video is on one side only."""

    label: str
    highest: list[Example]
    lowest: list[Example]


@dataclass
class OutputStats:
    output: str
    rows: int
    status: dict[str, int]
    error_codes: dict[str, int]
    labels: dict[str, int]
    """the ok rows' top-1 labels, most frequent first"""
    scores: Histogram
    """the ok rows' top-1 scores"""
    runs: list[RunStats]
    timelines: dict[str, Timeline] = field(default_factory=dict)
    """by run id, for the runs that still have rows in the output"""
    accuracy: Accuracy | None = None
    segments: SegmentStats | None = None
    """for a segments output only"""
    examples: list[LabelExamples] = field(default_factory=list)
    """for the most frequent labels (as charted), when asked for: the page's thumbnails"""
    unfinished_relabel: str | None = None
    """where a relabel stopped midway (its labels are in some files only): what to do"""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def output_stats(
    output_uri: str,
    truth_column: str | None = None,
    examples: int = 0,
    storage_options: dict | None = None,
) -> OutputStats:
    """`examples`: this many highest- and lowest-scoring videos of each of the most frequent
    labels. Raises `ConfigError` for a path that is not an output, or a truth column it lacks."""
    output = Output.existing(output_uri, storage_options)
    dataset = output.dataset()
    if truth_column is not None:
        check_truth_column(dataset.schema.names, truth_column)
    segmented = "segment_index" in dataset.schema.names
    columns = (
        ROW_COLUMNS
        + (["video_id", *SEGMENT_COLUMNS] if segmented else [])
        + ([truth_column] if truth_column else [])
        + (EXAMPLE_COLUMNS if examples else [])
    )
    table = dataset.to_table(columns=list(dict.fromkeys(columns)))
    ok = table.filter(pc.equal(table["status"], "ok"))
    reports = output.read_reports()
    stats = OutputStats(
        output=output_uri,
        rows=table.num_rows,
        status=counts(table["status"]),
        error_codes=counts(table["error_code"]),
        labels=counts(ok["label"]),
        scores=score_histogram(ok["score"]),
        runs=[RunStats.of(report) for report in reports],
        timelines=timelines(table, {r.run_id: r.started_at for r in reports if r.started_at}),
        accuracy=accuracy(ok, truth_column) if truth_column else None,
        segments=segment_stats(table, ok) if segmented else None,
        unfinished_relabel=unfinished_relabel(output.read_identity(), output_uri),
    )
    if examples:
        charted = stats.segments.label_seconds if stats.segments else stats.labels
        stats.examples = label_examples(ok, list(charted)[:EXAMPLE_LABELS], examples)
    return stats


def read_output(output_uri: str, columns: list[str] | None = None) -> pa.Table:
    """The output's committed rows, as any reader sees them."""
    return Output(output_uri).dataset().to_table(columns=columns)


def device_kinds(report: RunReport) -> list[str]:
    kinds = Counter(summary(device) for device in report.inference_devices)
    return [f"{n} actor(s) on {kind}" for kind, n in kinds.items()]


def counts(column: pa.ChunkedArray) -> dict[str, int]:
    """Non-null values by count, most frequent first (ties by value)."""
    pairs = pc.value_counts(column.drop_null()).to_pylist()
    ordered = sorted(pairs, key=lambda pair: (-pair["counts"], str(pair["values"])))
    return {str(pair["values"]): pair["counts"] for pair in ordered}


def score_histogram(scores: pa.ChunkedArray) -> Histogram:
    values = scores.drop_null().to_numpy()
    counted, edges = np.histogram(values, bins=SCORE_BINS, range=(0.0, 1.0))
    return Histogram([round(float(e), 4) for e in edges], counted.tolist())


def timelines(table: pa.Table, starts: dict[str, str]) -> dict[str, Timeline]:
    """By run id; `starts`: the runs' start times, where known. One pass over the rows however
    many runs there are: sorted by run, then cut."""
    labelled = table.select(["run_id", "processed_at"]).drop_null().sort_by("run_id")
    runs = pc.value_counts(labelled["run_id"]).to_pylist()  # in order of appearance: sorted
    if not runs:
        return {}
    micros = labelled["processed_at"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    cuts = np.cumsum([run["counts"] for run in runs])[:-1]
    return {
        run["values"]: timeline(rows, starts.get(run["values"]))
        for run, rows in zip(runs, np.split(micros.to_numpy(), cuts), strict=True)
    }


def timeline(micros: np.ndarray, start: str | None) -> Timeline:
    """`micros`: one run's `processed_at`, microseconds since the epoch."""
    micros = np.sort(micros)
    origin = micros[0] if not start else datetime.fromisoformat(start).timestamp() * 1e6
    # at most TIMELINE_POINTS moments, evenly spaced in rows; rows share the moment of their
    # inference batch, and each point counts every row labelled by then
    picked = np.unique(micros[np.linspace(0, len(micros) - 1, TIMELINE_POINTS).astype(int)])
    labelled = np.searchsorted(micros, picked, side="right")
    return Timeline(
        start=start or datetime.fromtimestamp(origin / 1e6, timezone.utc).isoformat(),
        seconds=[0.0] + [round((float(t) - origin) / 1e6, 3) for t in picked],
        videos=[0] + labelled.tolist(),
    )


def segment_stats(table: pa.Table, ok: pa.Table) -> SegmentStats:
    errors = table.filter(pc.equal(table["status"], "error"))
    seconds = owned_seconds(ok).group_by("label").aggregate([("owned_s", "sum")]).to_pylist()
    ordered = sorted(seconds, key=lambda row: (-row["owned_s_sum"], row["label"]))
    return SegmentStats(
        videos=pc.count_distinct(table["video_id"]).as_py(),
        segments=ok.num_rows,
        videos_with_errors=pc.count_distinct(errors["video_id"]).as_py(),
        label_seconds={row["label"]: round(row["owned_s_sum"], 3) for row in ordered},
    )


def owned_seconds(segments: pa.Table) -> pa.Table:
    """`segments` with `owned_s`: the seconds of video each one owns, from its start to the
    next segment's start of the same video, capped at its own end (the last one owns start to
    end). Overlapping segments (a stride below their length) so count each second once."""
    ordered = segments.sort_by([("video_id", "ascending"), ("segment_index", "ascending")])
    start = ordered["segment_start_s"].to_numpy()
    end = ordered["segment_end_s"].to_numpy()
    video = ordered["video_id"]
    followed = np.append(pc.equal(video[1:], video[:-1]).to_numpy(), False)
    next_start = np.append(start[1:], np.inf)
    owned_end = np.where(followed, np.minimum(next_start, end), end)
    return ordered.append_column("owned_s", pa.array(owned_end - start))


def accuracy(ok: pa.Table, truth_column: str) -> Accuracy:
    truth = pc.cast(ok[truth_column], pa.string())
    # a null truth compares as null, which `filter` drops like the empty ones
    judged = ok.append_column("_truth", truth).filter(pc.not_equal(truth, ""))
    first = pc.list_slice(judged["topk_labels"], 0, TOP_ACCURACY)
    rows = judged.num_rows
    return Accuracy(
        truth_column=truth_column,
        rows=rows,
        top1=share(pc.sum(pc.equal(judged["label"], judged["_truth"])).as_py(), rows),
        top5=share(top_hits(first, judged["_truth"]), rows),
        labels_per_row=pc.max(pc.list_value_length(first)).as_py() or 0,
        **confusion(judged["_truth"], judged["label"]),
    )


def top_hits(top: pa.ChunkedArray, truth: pa.ChunkedArray) -> int:
    """How many rows have their truth among their `top` labels."""
    parents = pc.list_parent_indices(top)
    hits = pc.equal(pc.list_flatten(top), pc.take(truth, parents))
    return len(pc.unique(pc.filter(parents, hits)))


def confusion(truth: pa.ChunkedArray, predicted: pa.ChunkedArray) -> dict:
    classes = list(counts(truth))[:CONFUSION_CLASSES]
    index = {name: i for i, name in enumerate(classes)}
    matrix = [[0] * (len(classes) + 1) for _ in classes]
    pairs = pa.table({"truth": truth, "predicted": predicted}).group_by(["truth", "predicted"])
    for pair in pairs.aggregate([([], "count_all")]).to_pylist():
        if pair["truth"] in index:
            matrix[index[pair["truth"]]][index.get(pair["predicted"], len(classes))] += pair[
                "count_all"
            ]
    return {"classes": classes, "confusion": matrix}


def share(part: int | None, whole: int) -> float | None:
    return round((part or 0) / whole, 4) if whole else None


def label_examples(ok: pa.Table, labels: list[str], per_side: int) -> list[LabelExamples]:
    """Each label's `per_side` highest- and lowest-scoring videos among the `ok` rows; ties go
    to the first video id."""
    shown = []
    for label in labels:
        rows = ok.filter(pc.equal(ok["label"], label))
        highest = first_per_video(
            rows.sort_by([("score", "descending"), ("video_id", "ascending")])
        )
        rest = rows.filter(
            pc.invert(pc.is_in(rows["video_id"], highest["video_id"].slice(0, per_side)))
        )
        lowest = first_per_video(rest.sort_by([("score", "ascending"), ("video_id", "ascending")]))
        shown.append(
            LabelExamples(label, examples_of(highest, per_side), examples_of(lowest, per_side))
        )
    return shown


def examples_of(rows: pa.Table, count: int) -> list[Example]:
    return [
        Example(
            video_id=row["video_id"],
            uri=row["uri"],
            score=round(row["score"], 4),
            at_s=middle(row["clip_start_s"], row["clip_end_s"]),
        )
        for row in rows.slice(0, count).to_pylist()
    ]


def middle(start_s: float | None, end_s: float | None) -> float:
    """Of a clip's span; its start (or the video's) where the span is not known."""
    if start_s is None or end_s is None:
        return start_s or 0.0
    return (start_s + end_s) / 2
