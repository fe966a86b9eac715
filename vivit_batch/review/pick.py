"""Which videos a person should label next: uncertain ones, spread over the embedding space.

The rule:
1. Candidates: `ok` rows whose truth value (`truth.Truth`: the output's column, or the labels
   files' by video_id) is null or empty (a video with a truth value is never one), one per
   video: in a segments output, the video's least certain segment.
2. Uncertainty: the margin, top-1 score minus top-2 score (`topk_scores`; the top-1 score
   where rows keep one label). Smaller is less certain.
3. The pool: the `POOL_FACTOR` x N least certain candidates (ties by video id).
4. The pick: greedy k-center (farthest first) on the pool's normalised embeddings, seeded with
   the least certain: each next video is the one farthest (cosine) from every video picked so
   far, ties to the less certain, then the lower video id. Near-duplicates of a picked video are
   at distance ~0, so they come last.
5. The picked videos, least certain first.

The output is read file by file, only the columns needed; the pool is bounded (at most twice its
size plus one file's candidates in memory), so a million-row output never has all its
embeddings in memory at once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from vivit_batch.output import Output, first_per_video
from vivit_batch.truth import Truth, has_value

POOL_FACTOR = 5
ROW_COLUMNS = [
    "video_id",
    "uri",
    "label",
    "score",
    "topk_scores",
    "embedding",
    "model",
    "model_sha256",
]
MARGIN = "margin"
ORDER = [(MARGIN, "ascending"), ("video_id", "ascending")]
"""least certain first, ties by video id"""


def pick_for_review(output: Output, count: int, truth: Truth | None = None) -> pa.Table:
    """The `count` videos to label next (fewer if there are fewer candidates), least certain
    first: `ROW_COLUMNS` (no embedding) plus `margin`, and in a segments output the segment's
    `segment_index`, `segment_start_s`, `segment_end_s`. Without `truth`, every `ok` video is
    a candidate."""
    names = output.dataset().schema.names
    segment_columns = [
        name for name in ("segment_index", "segment_start_s", "segment_end_s") if name in names
    ]
    truth_columns = truth.output_columns if truth else []
    pool = UncertainPool(POOL_FACTOR * count)
    for _, rows in output.each_file(
        ROW_COLUMNS + segment_columns + truth_columns, where=ds.field("status") == "ok"
    ):
        pool.offer(candidates(rows, truth, segment_columns))
    uncertain = pool.table()
    if uncertain is None:  # an output with no rows yet
        return pa.table(
            {name: pa.array([], pa.null()) for name in ROW_COLUMNS if name != "embedding"}
        )
    picked = uncertain.take(farthest_first(embeddings_of(uncertain), count))
    kept = [name for name in picked.column_names if name not in ("embedding", *truth_columns)]
    return picked.sort_by(ORDER).select(kept)


def candidates(rows: pa.Table, truth: Truth | None, segment_columns: list[str]) -> pa.Table:
    """`ok` rows without a truth value, with their margin, one per video: its least certain."""
    rows = rows.filter(pc.and_(pc.is_valid(rows["topk_scores"]), pc.is_valid(rows["embedding"])))
    if truth is not None:
        rows = rows.filter(pc.invert(has_value(truth.values(rows))))
    rows = rows.append_column(MARGIN, margins(rows["topk_scores"]))
    order = ORDER + [(name, "ascending") for name in segment_columns[:1]]  # segment_index
    return first_per_video(rows.sort_by(order))


def margins(topk_scores: pa.ChunkedArray) -> pa.Array:
    """Top-1 minus top-2 score of each row; the top-1 score where a row keeps one."""
    first_two = pc.list_slice(topk_scores, 0, 2, return_fixed_size_list=True)
    scores = np.nan_to_num(
        pc.list_flatten(first_two).to_numpy(zero_copy_only=False).reshape(-1, 2), nan=0.0
    )
    return pa.array(scores[:, 0] - scores[:, 1], pa.float32())


class UncertainPool:
    """The `size` least certain candidates offered so far (by `ORDER`), one row per video."""

    def __init__(self, size: int):
        self.size = size
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._worst: float | None = None
        """the largest margin kept, once the pool is full: larger ones cannot enter"""

    def offer(self, candidates: pa.Table) -> None:
        if self._worst is not None:
            candidates = candidates.filter(pc.less_equal(candidates[MARGIN], self._worst))
        self._tables.append(candidates)
        self._rows += candidates.num_rows
        if self._rows > 2 * self.size:
            self._compact()

    def table(self) -> pa.Table | None:
        """The pool, least certain first; None if nothing was offered."""
        if not self._tables:
            return None
        self._compact()
        return self._tables[0]

    def _compact(self) -> None:
        everything = pa.concat_tables(self._tables)
        kept = first_per_video(everything.sort_by(ORDER)).slice(0, self.size)
        self._tables, self._rows = [kept], kept.num_rows
        if kept.num_rows == self.size:
            self._worst = kept[MARGIN][-1].as_py()


def embeddings_of(rows: pa.Table) -> np.ndarray:
    """(rows, hidden) float32, each of unit length (a zero vector stays zero)."""
    if not rows.num_rows:
        return np.zeros((0, 1), np.float32)
    column = rows["embedding"].combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def farthest_first(vectors: np.ndarray, count: int) -> np.ndarray:
    """Greedy k-center: indices of `count` of the unit `vectors` (rows in order of preference),
    the first, then each time the one whose cosine distance to the nearest picked is largest
    (ties to the earlier row)."""
    count = min(count, len(vectors))
    picked = np.empty(count, np.int64)
    nearest = np.full(len(vectors), np.inf, np.float32)
    chosen = 0
    for step in range(count):
        picked[step] = chosen
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[chosen])
        nearest[picked[: step + 1]] = -np.inf  # never picked twice
        chosen = int(np.argmax(nearest))
    return picked
