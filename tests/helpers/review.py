"""The README and the CSV files `vivit-batch review` writes."""

from __future__ import annotations

import csv
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))
