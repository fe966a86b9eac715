"""Small outputs built through the project's own writer, for the report, review and analytics
tests: labelled rows of known videos and runs, per video or in segments."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from vivit_batch.output import FileWriter, Output, RunReport, Unlocked, commit_staged
from vivit_batch.output.schema import (
    BYTES_READ,
    DECODE_SECONDS,
    DECODED_ON_NVDEC,
    INFERENCE_DEVICE,
    INFERENCE_SECONDS,
    METADATA_COLUMNS,
    PREDICTION_COLUMNS,
    SEGMENT_COLUMNS,
    VERSION_COLUMNS,
    VIEWS,
    output_schema,
)

HIDDEN = 4

START = datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)

# video: (truth, top-3 labels, top-1 score); the top-1 label is the first
VIDEOS = {
    "v0": ("cat", ["cat", "dog", "bird"], 0.9),
    "v1": ("cat", ["cat", "bird", "dog"], 0.8),
    "v2": ("cat", ["dog", "cat", "bird"], 0.55),  # top-3 hit only
    "v3": ("dog", ["dog", "cat", "bird"], 0.7),
    "v4": ("dog", ["bird", "fish", "cat"], 0.4),  # a miss
    "v5": ("bird", ["bird", "dog", "cat"], 0.95),
    "v6": ("", ["fish", "cat", "dog"], 0.3),  # no truth: not judged
}

ERRORS = {"e0": "unreadable", "e1": "unreadable", "e2": "timeout"}


def rows_of(run_id: str, ids: list[str], started: datetime) -> pa.Table:
    """Rows as the inference stage hands them to the sink, with a `truth` manifest column."""
    return labelled_rows(run_id, ids, [VIDEOS.get(i) for i in ids], started)


def labelled_rows(
    run_id: str, ids: list[str], videos: list[tuple | None], started: datetime
) -> pa.Table:
    """One row per id, labelled as `videos` says (as `VIDEOS`' values; None: an error row)."""
    count = len(ids)
    columns = {
        "video_id": pa.array(ids),
        "uri": pa.array([f"/videos/{i}.mp4" for i in ids]),
        "status": pa.array(["ok" if v else "error" for v in videos]),
        "error_code": pa.array([ERRORS.get(i) for i in ids]),
        "error_message": pa.nulls(count, pa.string()),
        **{name: pa.nulls(count, kind) for name, kind in PREDICTION_COLUMNS.items()},
        "label": pa.array([v[1][0] if v else None for v in videos]),
        "score": pa.array([v[2] if v else None for v in videos], pa.float32()),
        "topk_labels": pa.array([v[1] if v else None for v in videos]),
        "embedding": pa.nulls(count, pa.list_(pa.float32(), HIDDEN)),
        **{name: pa.nulls(count, kind) for name, kind in METADATA_COLUMNS.items()},
        **{name: pa.nulls(count, kind) for name, kind in VERSION_COLUMNS.items()},
        "model": pa.array(["demo"] * count),
        "model_sha256": pa.array(["ab" * 32] * count),
        "run_id": pa.array([run_id] * count),
        "processed_at": pa.array([started + timedelta(seconds=20 * n) for n in range(count)]),
        VIEWS: pa.array([3 if v else 0 for v in videos], pa.int32()),
        DECODE_SECONDS: pa.array([0.5] * count),
        DECODED_ON_NVDEC: pa.array([False] * count),
        INFERENCE_SECONDS: pa.array([0.25] * count),
        BYTES_READ: pa.array([100] * count, pa.int64()),
        INFERENCE_DEVICE: pa.array(['{"device": "cpu"}'] * count),
        "truth": pa.array([v[0] if v else None for v in videos]),
    }
    return pa.table(columns)


def commit_run(
    output: Output, run_id: str, ids: list[str], started: datetime, partitioned: bool = False
) -> None:
    """Commit `ids` as the job does, then the run's report; `partitioned`: into the
    `run_date=` folder of the day `started`."""
    partitions = {"run_date": started.date().isoformat()} if partitioned else {}
    schema = output_schema(HIDDEN, tuple(partitions))
    commit_rows(output, rows_of(run_id, ids, started), schema, started, partitions)


def commit_rows(
    output: Output,
    rows: pa.Table,
    schema: pa.Schema,
    started: datetime,
    partitions: dict[str, str] | None = None,
) -> None:
    """Commit one run's `rows` as the job does (3 rows a file), then the run's report."""
    ids = rows["video_id"].to_pylist()
    run_id = rows["run_id"][0].as_py()
    writer = FileWriter(output, run_id, schema, rows_per_file=3, partition_values=partitions or {})
    for staged in writer(rows).to_pylist():
        commit_staged(output, Unlocked(), staged)
    device = {"node": "n1", "device": "cpu", "name": "EPYC", "threads": 2, "precision": "fp32"}
    report = RunReport(
        run_id=run_id,
        started_at=started.isoformat(),
        wall_seconds=20.0 * len(ids),
        rows_written=len(ids),
        counts={"status": {"error": sum(i in ERRORS for i in ids)}},
        inference_devices=[device | {"torch": "2.13.0", "cuda": None}],
    )
    output.write_report(report, Unlocked())


def new_output(path: Path) -> Output:
    output = Output(str(path))
    output.create()
    output.write_identity({"weights_sha256": "ab" * 32}, Unlocked())
    return output


SEGMENT_SECONDS = {"dog": 12.0, "cat": 9.5, "bird": 5.0}
"""by label, each second of video once; summing end - start would count clip-2's overlap twice"""


def segment_rows(run_id: str, started: datetime) -> pa.Table:
    """`SEGMENTS` as the inference stage hands them to the sink: one row per segment (latest
    first, so that readers must order them), one per error."""
    rows = [
        (video_id, index, segment)
        for video_id, segments in SEGMENTS.items()
        for index, segment in reversed(list(enumerate(segments or [None])))
    ]
    ids = [video_id for video_id, _, _ in rows]
    labels = [(s[2], [s[2], "fish"], 0.75) if s else None for _, _, s in rows]
    table = labelled_rows(run_id, ids, labels, started)
    segment_columns = {
        "segment_index": [index if s else None for _, index, s in rows],
        "segment_start_s": [s[0] if s else None for _, _, s in rows],
        "segment_end_s": [s[1] if s else None for _, _, s in rows],
    }
    for position, (name, values) in enumerate(segment_columns.items(), start=2):
        table = table.add_column(position, name, pa.array(values, SEGMENT_COLUMNS[name]))
    return table


# video: its segments as (start, end, top-1 label), in time order; None: an error row
SEGMENTS: dict[str, list[tuple[float, float, str]] | None] = {
    # 4 s segments every 4 s over 18 s, the last one partial; its longest stretch: cat, 4-12 s
    "clip-1": [(0, 4, "dog"), (4, 8, "cat"), (8, 12, "cat"), (12, 16, "dog"), (16, 18, "dog")],
    # 4 s segments every 2 s over 7 s: each owns 2 s, the last one 4-7 s (dog 2 s, bird 5 s)
    "clip-2": [(0, 4, "dog"), (2, 6, "bird"), (4, 7, "bird")],
    "clip-3": [(0, 1.5, "cat")],  # shorter than one segment
    "e0": None,
}


# video: (label, score, clip span in seconds or None: no such file, b"...": a broken file)
THUMBNAIL_VIDEOS = {
    "v0": ("cat", 0.9, (0.4, 0.6)),  # the frame in the middle: 0.5 s, frame 15
    "v4": ("cat", 0.7, (0.8, 1.0)),
    "v1": ("cat", 0.5, (0.0, 0.4)),  # frame 6
    "v2": ("dog", 0.8, None),
    "v3": ("dog", 0.3, b"not a video"),
}


def thumbnail_rows(videos: dict, uris: list[str]) -> pa.Table:
    """Rows of `videos` (as `THUMBNAIL_VIDEOS`) whose sources are at `uris`."""
    labelled = [(None, [label, "fish"], score) for label, score, _ in videos.values()]
    rows = labelled_rows("night1", list(videos), labelled, START)
    spans = [s if isinstance(s, tuple) else (0.0, 1.0) for _, _, s in videos.values()]
    for name, values in {
        "uri": pa.array(uris),
        "clip_start_s": pa.array([start for start, _ in spans]),
        "clip_end_s": pa.array([end for _, end in spans]),
    }.items():
        rows = rows.set_column(rows.schema.get_field_index(name), name, values)
    return rows
