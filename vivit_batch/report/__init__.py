"""`vivit-batch report OUTPUT`: what an output dataset holds and how its runs went, as text,
JSON (`OutputStats.to_dict`) or one self-contained HTML page (`html.py`, imported on demand:
it loads plotly); and the summary a finished run prints."""

from vivit_batch.report.stats import OutputStats, output_stats, read_output
from vivit_batch.report.text import device_lines, run_summary, summary_text

__all__ = [
    "OutputStats",
    "device_lines",
    "output_stats",
    "read_output",
    "run_summary",
    "summary_text",
]
