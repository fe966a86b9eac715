"""Segments mode's decode cost and memory on long videos.

    python -m benchmarks.segments [--minutes 10]

Generates 720p H.264 videos (`benchmarks.decode`'s camera-like panning scene, x264 preset fast,
a keyframe every 250 frames, 30 fps) of `--minutes` minutes and of one minute, then measures,
with one decoder thread, the CPU seconds of

  plain        decoding every frame in order and nothing else: the floor of any one pass
  segments     `decode_segments` with the real checkpoint's sampling (32 frames every 4th: a
               4.27 s segment) and preprocessing (short side 224, centre crop 224)
  per segment  the per-video mode once per segment: open, seek to the segment and decode its
               clip, as a run over one manifest row per segment would

(each after a warm-up run on the short video) and, in a fresh process each, the peak resident
memory of a segments decode of the short, the long, and an hour-long video (the long one
repeated). Writes the "## Segments" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from benchmarks.decode import KEYINT, PROCESSOR, SIZES, generate
from benchmarks.results import cpu_model, load_average, write_section
from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.video import DecodeRequest
from vivit_batch.video.decode import assemble_clips, open_video
from vivit_batch.video.frames import Deadline
from vivit_batch.video.sampling import plan_segments
from vivit_batch.video.segments import decode_segments

SAMPLING = SamplingConfig(num_frames=32, frame_sample_rate=4, temporal_views="segments")
TARGET = 1.3
"""Most segments / plain CPU wanted."""
PEAK_RSS = """
import sys
from pathlib import Path
import torch  # the resize's, imported on the first frame otherwise
from benchmarks.segments import request
from vivit_batch.video.segments import decode_segments

def status(name):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(name))
    return int(line.split()[1])

Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
before = status("VmRSS:")
for chunk in decode_segments(request(sys.argv[1])):
    del chunk
print(before, status("VmHWM:"))
"""
"""Prints the resident KiB after the imports and the peak of the decode after them (Linux)."""


def request(path: str) -> DecodeRequest:
    return DecodeRequest(path, SAMPLING, PROCESSOR, config=DecodeConfig(timeout_s=None))


def plain(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return sum(1 for _ in container.decode(stream))


def segments(path: Path) -> int:
    return sum(len(chunk.clips) for chunk in decode_segments(request(str(path))))


def per_segment(path: Path) -> int:
    """Each segment's clip decoded as the per-video mode decodes one clip: a fresh open, a
    seek to the keyframe before it, decoding on to its last frame."""
    with open_video(request(str(path)), Deadline(str(path), None)) as video:
        info = video.info
    plan = plan_segments(info.frame_count or 0, SAMPLING, info.sampling_fps)
    for positions in plan.positions:
        with open_video(request(str(path)), Deadline(str(path), None)) as video:
            pictures = video.decoder.decode_at(info.times(positions[None, :]), video.converter)
            assemble_clips(pictures, PROCESSOR, SAMPLING)
    return len(plan.positions)


def cpu_seconds(run, path: Path) -> tuple[float, int]:
    started = time.process_time()
    count = run(path)
    return time.process_time() - started, count


def peak_rss_mib(path: Path) -> tuple[float, float]:
    """(after imports, peak) resident MiB of a fresh process decoding `path`'s segments."""
    output = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout.split()
    return int(output[0]) / 1024, int(output[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--videos", help="keep the generated videos here, and reuse them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.videos or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        long = video(directory / f"{args.minutes}min.mp4", 60 * args.minutes)
        short = video(directory / "1min.mp4", 60)
        hour = repeated(long, 60 // args.minutes, directory / "60min.mp4")
        runs = {"plain": plain, "segments": segments, "per segment": per_segment}
        for run in runs.values():  # warm-up: first calls into PyAV, swscale and torch
            run(short)
        results = {}
        for name, run in runs.items():
            results[name] = cpu_seconds(run, long)
            print(f"  {name}: {results[name][0]:.1f} CPU s, {results[name][1]}", flush=True)
        memory = {"1 min": peak_rss_mib(short), f"{args.minutes} min": peak_rss_mib(long)}
        memory["60 min"] = peak_rss_mib(hour)
    write_section("Segments", report(args.minutes, results, memory))


def repeated(path: Path, times: int, target: Path) -> Path:
    """`path`'s video `times` over, back to back (its packets copied, not encoded again)."""
    if target.exists():
        return target
    with av.open(str(path)) as source, av.open(str(target), "w") as output:
        stream = source.streams.video[0]
        copy = output.add_stream_from_template(stream)
        length = stream.duration
        for turn in range(times):
            source.seek(0)
            for packet in source.demux(stream):
                if packet.dts is None:
                    continue
                packet.pts += turn * length
                packet.dts += turn * length
                packet.stream = copy
                output.mux(packet)
    return target


def video(path: Path, seconds: int) -> Path:
    if not path.exists():
        print(f"generating {path.name} (720p) ...", flush=True)
        generate(path.with_suffix(".tmp.mp4"), *SIZES["720p"], seconds, KEYINT).rename(path)
    return path


def report(minutes: int, results: dict, memory: dict) -> str:
    base = results["plain"][0]
    rows = [
        f"| {name} | {seconds:.1f} | {seconds / base:.2f}x | {count} |"
        for name, (seconds, count) in results.items()
    ]
    ratio = results["segments"][0] / base
    verdict = "met" if ratio <= TARGET else "NOT met"
    return "\n".join(
        [
            "## Segments",
            "",
            f"`python -m benchmarks.segments --minutes {minutes}` on "
            f"{datetime.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, PyAV {av.__version__}; load average "
            f"{load_average()} at the end. A {minutes}-minute 720p H.264 video (30 fps, "
            "x264 fast, keyframe every 250 frames), one decoder thread, CPU seconds of this "
            "process. Segments: the real checkpoint's 32 frames every 4th (4.27 s), short side "
            "224, centre crop.",
            "",
            "| decode | CPU s | / plain | frames or segments |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Segments against one plain decode of every frame: {ratio:.2f}x (target at most "
            f"{TARGET}x: {verdict}); against the per-video mode once per segment: "
            f"{results['segments'][0] / results['per segment'][0]:.2f}x.",
            "",
            "Peak resident memory of a process doing only the segments decode (MiB; after its "
            "imports, then the peak; the hour is the video above 6 times over, its packets "
            "copied):",
            "",
            "| video | after imports | peak |",
            "|---|---|---|",
            *(f"| {name} | {rss:.0f} | {peak:.0f} |" for name, (rss, peak) in memory.items()),
            "",
            "The decoder holds at most about two chunks of clips (decode.segments_per_chunk=16: "
            "16 x 32 x 224 x 224 x 3 bytes = 73.5 MiB each) whatever the video's length.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
