"""The README's segment-output examples, DuckDB and pandas, run as written against a segments
output built with the real sink (`tests.test_report.SEGMENTS`): each snippet starts at a
`-- readme: NAME` / `# readme: NAME` line, and its `labels/` becomes the output's path."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "#### Segment outputs"

TIMELINE = [  # clip-1, in time order
    (0, 0.0, 4.0, "dog", 0.75),
    (1, 4.0, 8.0, "cat", 0.75),
    (2, 8.0, 12.0, "cat", 0.75),
    (3, 12.0, 16.0, "dog", 0.75),
    (4, 16.0, 18.0, "dog", 0.75),
]
LONGEST = [  # video, label, start, end, seconds
    ("clip-1", "cat", 4.0, 12.0, 8.0),  # not the first or the last run of the video
    ("clip-2", "bird", 2.0, 7.0, 5.0),  # two overlapping segments merged
    ("clip-3", "cat", 0.0, 1.5, 1.5),
]
MIX = {  # video, label: share of the video's seconds
    ("clip-1", "dog"): 10 / 18,
    ("clip-1", "cat"): 8 / 18,
    ("clip-2", "bird"): 5 / 7,  # owned seconds: 2-4 and 4-7, not 2-6 and 4-7
    ("clip-2", "dog"): 2 / 7,
    ("clip-3", "cat"): 1.0,
}


def readme_snippets(language: str, comment: str, output_uri: str) -> dict[str, str]:
    """The section's `language` blocks, cut at `<comment> readme: NAME` lines, by NAME."""
    section = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL))
    parts = re.split(rf"^{re.escape(comment)} readme: (.+)$", code, flags=re.MULTILINE)[1:]
    return {
        name: body.replace("labels/", f"{output_uri}/")
        for name, body in zip(parts[::2], parts[1::2], strict=True)
    }


@pytest.fixture
def sql(segments_output) -> dict[str, str]:
    return readme_snippets("sql", "--", segments_output.uri)


def test_the_readme_has_each_example_in_sql_and_pandas(segments_output):
    names = ["timeline", "longest stretch", "label mix"]
    assert list(readme_snippets("sql", "--", segments_output.uri)) == names
    assert list(readme_snippets("python", "#", segments_output.uri)) == names


def test_duckdb_timeline(sql):
    assert duckdb.execute(sql["timeline"]).fetchall() == TIMELINE


def test_duckdb_longest_stretch(sql):
    assert duckdb.execute(sql["longest stretch"]).fetchall() == LONGEST


def test_duckdb_label_mix(sql):
    rows = duckdb.execute(sql["label mix"]).fetchall()
    assert [(video, label) for video, label, _, _ in rows] == list(MIX)  # most first
    assert {(video, label): share for video, label, _, share in rows} == pytest.approx(MIX)
    assert sum(seconds for _, _, seconds, _ in rows) == 18 + 7 + 1.5  # each second once


def test_pandas_examples(segments_output):
    names: dict = {}
    for snippet in readme_snippets("python", "#", segments_output.uri).values():
        exec(snippet, names)
    timeline = names["timeline"]
    assert isinstance(timeline, pd.DataFrame)
    assert list(timeline.itertuples(index=False, name=None)) == TIMELINE
    assert list(names["longest"].itertuples(index=False, name=None)) == LONGEST
    assert names["mix"].to_dict() == pytest.approx(MIX)
