"""What the fast and the end-to-end tests of `test_relabel` share."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from vivit_batch.cli import main


def relabel(output: Path | str, head: Path, *extra: str) -> int:
    return main(["relabel", str(output), "--model", str(head), *extra])


def by_video(table: pa.Table) -> pa.Table:
    return table.sort_by("video_id")
