"""Segments mode on the job: object-store and driver memory while an hour of 720p is labelled.

    python -m benchmarks.segments_job --videos DIR

Labels `DIR/60min.mp4` (written by `python -m benchmarks.segments --videos DIR`) with
`sampling.temporal_views=segments` on embedded local Ray, with a small random checkpoint of the
real one's input geometry (32 frames of 224 x 224, tubelets 2 x 16 x 16; 2 layers of width 32,
so that inference keeps up with decoding on a CPU). Every second a thread reads the object
store's use (`ray._private.internal_api.memory_summary`); reported: its peak, the driver's peak
resident memory, wall time, rows and files. Writes the "## Segments on the job" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from benchmarks.results import cpu_model, load_average, write_section
from vivit_batch import job
from vivit_batch.config import load_config
from vivit_batch.testing.checkpoints import make_checkpoint

GEOMETRY: dict[str, Any] = dict(
    image_size=224, num_frames=32, tubelet_size=[2, 16, 16], hidden_size=32
)
CLIP_BYTES = 32 * 224 * 224 * 3
PLASMA = re.compile(r"Plasma memory usage (\d+) MiB")


class ObjectStorePeak(threading.Thread):
    """The object store's largest use seen, in MiB, looking every `every_s` seconds."""

    def __init__(self, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        from ray._private.internal_api import memory_summary

        while not self.stopped.wait(self.every_s):
            found = PLASMA.search(memory_summary(stats_only=True))
            if found:
                self.peak = max(self.peak, int(found.group(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", required=True, help="where benchmarks.segments left them")
    args = parser.parse_args()
    video = Path(args.videos) / "60min.mp4"
    with tempfile.TemporaryDirectory() as directory:
        make_checkpoint(Path(directory) / "ckpt", **GEOMETRY)
        manifest = Path(directory) / "manifest.txt"
        manifest.write_text(f"{video}\n")
        config = load_config(
            None,
            ["sampling.temporal_views=segments"],
            manifest_uri=str(manifest),
            output_uri=str(Path(directory) / "out"),
            model_source=str(Path(directory) / "ckpt"),
        )
        prepared = job.prepare_job(config)
        job.connect(None)
        watcher = ObjectStorePeak()
        watcher.start()
        report = job.run_job(prepared)
        watcher.stopped.set()
        files = len(list((Path(directory) / "out").glob("*.parquet")))
        rows = ds.dataset(Path(directory) / "out").count_rows()
    driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_section("Segments on the job", section(report, watcher.peak, driver_mib, rows, files))


def section(report, store_mib: int, driver_mib: float, rows: int, files: int) -> str:
    return "\n".join(
        [
            "## Segments on the job",
            "",
            f"`python -m benchmarks.segments_job` on {datetime.date.today().isoformat()}, "
            f"{cpu_model()}, {os.cpu_count()} cores; load average {load_average()} at the end. "
            "One hour of 720p H.264 (the Segments section's video) labelled in segments mode "
            "on embedded local Ray, with a random checkpoint of the real one's input geometry "
            "(32 x 224 x 224, tubelets 2 x 16 x 16, 2 layers of width 32); "
            f"{report.resources['decode_actors']} decode and "
            f"{report.resources['inference_actors']} inference actor(s).",
            "",
            f"- {rows} segment rows of 1 video in {files} file(s); wall "
            f"{report.wall_seconds:.0f} s ({report.throughput.clips_per_second} clips/s).",
            f"- Object store, peak seen (sampled every second): {store_mib} MiB, where the "
            f"video's clips would take {rows * CLIP_BYTES / 2**30:.1f} GiB at once; one chunk "
            f"of 16 segments is {16 * CLIP_BYTES / 2**20:.1f} MiB.",
            f"- Driver, peak resident memory: {driver_mib:.0f} MiB (it holds the video's "
            "labelled rows, no pixels, until the last is in).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
