"""What the commands that read an output (`report`, `review`, `train-head`) share beyond
`Output.existing`, `Output.dataset` and `Output.each_file`: its manifest columns, and a video's
first row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vivit_batch.errors import ConfigError
from vivit_batch.output.schema import WRITTEN_COLUMNS


def manifest_columns(columns: list[str]) -> list[str]:
    """Those of an output's `columns` that came from its manifest."""
    return [name for name in columns if name not in WRITTEN_COLUMNS]


def check_truth_column(columns: list[str], truth_column: str, fix: str = "") -> None:
    """`ConfigError` unless `truth_column` is one of the manifest columns among an output's
    `columns`; `fix` ends the message."""
    known = manifest_columns(columns)
    if truth_column not in known:
        raise ConfigError(
            f"--truth-column {truth_column}: the output has no such manifest column; it has "
            + (", ".join(known) or "none")
            + fix
        )


def first_per_video(rows: pa.Table) -> pa.Table:
    """The first of each video's rows (by `video_id`), in their order."""
    ids = rows["video_id"].combine_chunks().dictionary_encode().indices.to_numpy()
    _, first = np.unique(ids, return_index=True)
    return rows.take(np.sort(first))
