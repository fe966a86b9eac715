"""The review file: the picked videos (`pick.pick_for_review`) in a form a person fills in.

* `csv`, `jsonl`: `uri`, `video_id`, `predicted_label`, `predicted_score`, `margin` (in a
  segments output also the least certain segment's `segment_start_s`, `segment_end_s`), then
  the truth column, empty (CSV) or null (JSONL), to be filled and joined into the manifest by
  `video_id`.
* `label-studio`: Label Studio's task import JSON (its "Import pre-annotated data" guide): a
  list of tasks, each with `data` (`video`: the URI, for `<Video name="video" value="$video"/>`,
  plus `video_id`, `margin` and the segment's span) and one prediction, the predicted label as a
  `choices` result from `label` to `video`, with the top-1 `score` and the model as its
  `model_version`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa

from vivit_batch.errors import ConfigError

FORMATS = ("csv", "jsonl", "label-studio")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl"}
SEGMENT_SPAN = ("segment_start_s", "segment_end_s")
TRUTH = "truth"
"""The truth column's name without --truth-column."""
FROM_NAME, TO_NAME = "label", "video"
"""The labeling config's `<Choices name=...>` and `<Video name=...>` the predictions refer to."""


def review_format(path: str, format: str | None) -> str:
    """`format` if given, else the one `path`'s extension names (`ConfigError` if none does)."""
    if format is not None:
        return format
    extension = Path(path).suffix.lower()
    if extension not in EXTENSIONS:
        raise ConfigError(
            f"--save {path}: no review format has the extension {extension or '(none)'}; name "
            "the file .csv or .jsonl, or pass --format (csv, jsonl or label-studio)"
        )
    return EXTENSIONS[extension]


def write_review(picked: pa.Table, path: str, format: str, truth_column: str) -> None:
    rows = picked.to_pylist()
    try:
        with open(path, "w", newline="", encoding="utf-8") as stream:
            if format == "csv":
                table = [to_fill(row, truth_column) for row in rows]
                writer = csv.DictWriter(stream, fieldnames=fields(picked, truth_column))
                writer.writeheader()
                writer.writerows(table)
            elif format == "jsonl":
                stream.writelines(json.dumps(to_fill(row, truth_column)) + "\n" for row in rows)
            else:
                json.dump([label_studio_task(row) for row in rows], stream, indent=1)
    except OSError as error:
        raise ConfigError(f"--save {path}: cannot write it ({error})") from error


def fields(picked: pa.Table, truth_column: str) -> list[str]:
    span = [name for name in SEGMENT_SPAN if name in picked.column_names]
    return ["uri", "video_id", "predicted_label", "predicted_score", "margin", *span, truth_column]


def to_fill(row: dict, truth_column: str) -> dict:
    """One line of the CSV or JSONL file, its truth value empty."""
    return {
        "uri": row["uri"],
        "video_id": row["video_id"],
        "predicted_label": row["label"],
        "predicted_score": round(row["score"], 6),
        "margin": round(row["margin"], 6),
        **{name: row[name] for name in SEGMENT_SPAN if name in row},
        truth_column: None,
    }


def label_studio_task(row: dict) -> dict:
    """A task whose prediction pre-selects the predicted label. Result ids are unique per
    video (Label Studio asks for unique ids), so files from several reviews can be imported."""
    result_id = hashlib.blake2b(row["video_id"].encode(), digest_size=5).hexdigest()
    return {
        "data": {
            "video": row["uri"],
            "video_id": row["video_id"],
            "margin": round(row["margin"], 6),
            **{name: row[name] for name in SEGMENT_SPAN if name in row},
        },
        "predictions": [
            {
                "model_version": f"{row['model']} ({(row['model_sha256'] or '')[:12]})",
                "score": round(row["score"], 6),
                "result": [
                    {
                        "id": result_id,
                        "type": "choices",
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "value": {"choices": [row["label"]]},
                    }
                ],
            }
        ],
    }
