"""What the fast and the end-to-end tests of `test_job` share."""

from __future__ import annotations

import csv
from pathlib import Path

from vivit_batch.cli import main


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(manifest, output, model, *extra: str) -> int:
    return main(
        ["run", "--manifest", str(manifest), "--output", str(output), "--model", str(model), *extra]
    )
