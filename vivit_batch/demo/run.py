"""`vivit-batch demo`: generate labelled sample videos, run the real job on them, score it."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

from vivit_batch import job
from vivit_batch.config import load_config
from vivit_batch.demo import CHECKPOINT_DIR, FRAME_SAMPLE_RATE, write_sample_set
from vivit_batch.output import RunReport
from vivit_batch.report import read_output, run_summary


def write_demo_manifest(directory: Path, count: int, seed: int) -> Path:
    """Sample videos (plus one corrupt file) and a CSV manifest with their true labels."""
    videos = write_sample_set(directory / "videos", count, seed, corrupt=1)
    manifest = directory / "manifest.csv"
    with open(manifest, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["uri", "video_id", "true_label", "codec"])
        for video in videos:
            name = video.path.name
            writer.writerow([f"videos/{name}", video.path.stem, video.label, video.codec])
        writer.writerow(["videos/corrupt_000.mp4", "corrupt_000", "", ""])
    return manifest


def run_demo(directory: str | Path, count: int, seed: int) -> RunReport:
    """Write the sample set, label it with the bundled model on embedded local Ray, print the
    run's summary and the demo's score; the run report."""
    directory = Path(directory)
    output = directory / "output"
    shutil.rmtree(output, ignore_errors=True)
    print(f"writing {count} sample videos and a corrupt one to {directory / 'videos'} ...")
    config = load_config(
        None,
        [f"sampling.frame_sample_rate={FRAME_SAMPLE_RATE}", "run.max_error_fraction=0.2"],
        manifest_uri=str(write_demo_manifest(directory, count, seed)),
        output_uri=str(output),
        model_source=str(CHECKPOINT_DIR),
    )
    prepared = job.prepare_job(config)
    job.connect(None)
    report = job.run_job(prepared)
    print(run_summary(report))
    if not report.error_budget.exceeded:
        print(demo_summary(read_output(str(output)).to_pylist(), output))
    return report


def demo_summary(rows: list[dict], output: Path) -> str:
    labelled = [r for r in rows if r["status"] == "ok"]
    correct = sum(r["label"] == r["true_label"] for r in labelled)
    lines = [
        "",
        f"accuracy: {correct}/{len(labelled)} videos labelled correctly "
        f"({correct / max(1, len(labelled)):.0%})",
        "labels:",
    ]
    counts = Counter(r["label"] for r in labelled)
    lines += [f"  {n:>3}  {label}" for label, n in sorted(counts.items())]
    for row in rows:
        if row["status"] == "error":
            lines.append(
                f"error row: {row['video_id']}: {row['error_code']}: {row['error_message']}"
            )
    lines += [
        f"output: {output} (Parquet; try `vivit-batch report {output}`)",
        f"query: python -c \"import pandas as pd; print(pd.read_parquet('{output}')"
        "[['video_id','true_label','label','score']])\"",
    ]
    return "\n".join(lines)
