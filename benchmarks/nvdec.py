"""What NVDEC could give the job: the GPU's video decoders against the CPU decode path, on the
GPU section's videos (1280x720 H.264, 150 frames, x264 defaults: one keyframe).

    python -m benchmarks.nvdec --json PATH [--seconds 10]
    python -m benchmarks.nvdec --render PATH    # BENCHMARKS.md's section from --json

Needs PyNvVideoCodec (NVIDIA's wheel bundles its demuxer; 2.2.4, 27 MB) and a GPU; written for
the next lent machine and not yet run (none was lent since). It measures:

1. NVDEC: P processes (1, 2, 4, 7, 14; H100/H200 have 7 NVDEC engines), each with a
   `SimpleDecoder` (RGB output in device memory, reconfigured from file to file) decoding the
   centre clip's 32 frames at stride 4 of each video in turn for `--seconds`; clips/s, and the
   frames through the decoder (from the keyframe to the clip's last frame) per second and per
   engine.
2. The CPU path in the same run: the decode stage (`decode_video`, sandboxed worker left out)
   in one process per core for the same time: clips/s, and per core.
3. Pixels: the clip's frames from NVDEC against PyAV's rgb24 conversion of the same frames
   (before any resize): mean and largest absolute difference, share of values off by more
   than 2.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.gpu import DISTINCT_VIDEOS, VIDEO, machine, write_inputs
from benchmarks.results import write_section
from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.video.decode import DecodeRequest, decode_video
from vivit_batch.video.sampling import frame_positions

SAMPLING = SamplingConfig(num_frames=32)
PROCESSES = (1, 2, 4, 7, 14)
NVDEC_ENGINES = 7


def clip_frames() -> list[int]:
    return frame_positions(VIDEO["num_frames"], SAMPLING)[0].tolist()


def nvdec_worker(paths: list[str], seconds: float, results) -> None:
    import PyNvVideoCodec as nvc
    import torch

    indices = clip_frames()
    decoder, clips, started = None, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        path = paths[clips % len(paths)]
        if decoder is None:
            decoder = nvc.SimpleDecoder(
                path, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB
            )
        else:
            decoder.reconfigure_decoder(path)
        frames = decoder.get_batch_frames_by_index(indices)
        torch.stack([torch.from_dlpack(frame) for frame in frames])
        torch.cuda.synchronize()
        clips += 1
    results.put((clips, time.perf_counter() - started))


def cpu_worker(paths: list[str], seconds: float, results) -> None:
    os.sched_setaffinity(0, {core_of(paths)})
    config = DecodeConfig(isolation="none")
    clips, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        request = DecodeRequest(paths[clips % len(paths)], SAMPLING, ProcessorConfig(), "v", config)
        decode_video(request)
        clips += 1
    results.put((clips, time.perf_counter() - started))


def core_of(paths: list[str]) -> int:
    """A CPU worker's core: its place among the workers, which its first video gives (each
    worker starts one video further on: see `in_processes`)."""
    cores = sorted(os.sched_getaffinity(0))
    return cores[int(Path(paths[0]).stem[1:]) % len(cores)]


def in_processes(worker, paths: list[str], processes: int, seconds: float) -> dict:
    context = multiprocessing.get_context("spawn")  # one CUDA context per process
    results = context.Queue()
    workers = [
        context.Process(target=worker, args=(paths[i:] + paths[:i], seconds, results))
        for i in range(processes)
    ]
    for process in workers:
        process.start()
    counted = [results.get(timeout=seconds + 120) for _ in workers]
    for process in workers:
        process.join()
    clips = sum(count for count, _ in counted)
    wall = max(elapsed for _, elapsed in counted)
    return {"processes": processes, "clips": clips, "clips_per_second": clips / wall}


def pixel_difference(path: str) -> dict:
    import av
    import PyNvVideoCodec as nvc
    import torch

    indices = clip_frames()
    decoder = nvc.SimpleDecoder(
        path, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB
    )
    frames = decoder.get_batch_frames_by_index(indices)
    gpu = torch.stack([torch.from_dlpack(frame) for frame in frames]).cpu().numpy()
    wanted, cpu = set(indices), {}
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                cpu[index] = frame.to_ndarray(format="rgb24")
    expected = np.stack([cpu[index] for index in indices])
    difference = np.abs(gpu.astype(np.int16) - expected.astype(np.int16))
    return {
        "mean_abs": float(difference.mean()),
        "max_abs": int(difference.max()),
        "share_above_2": float((difference > 2).mean()),
    }


def render(figures: dict) -> str:
    m = figures["machine"]
    frames_per_clip = clip_frames()[-1] + 1  # decoded from the keyframe at 0 up to the last
    lines = [
        "## NVDEC",
        "",
        f"`python -m benchmarks.nvdec`, {m['date']}, on {m['gpu']}; {m['cpu']}. The GPU "
        f"section's {DISTINCT_VIDEOS} videos; the centre clip (32 frames at stride 4: "
        f"{frames_per_clip} frames through the decoder from the keyframe) of each in turn.",
        "",
        "| decoder | processes | clips/s | frames decoded/s | per engine or core |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, runs in (("NVDEC", figures["nvdec"]), ("CPU (PyAV)", figures["cpu"])):
        for run in runs:
            frames = run["clips_per_second"] * frames_per_clip
            units = min(run["processes"], NVDEC_ENGINES) if name == "NVDEC" else run["processes"]
            lines.append(
                f"| {name} | {run['processes']} | {run['clips_per_second']:.1f} | {frames:,.0f} "
                f"| {frames / units:,.0f} |"
            )
    if pixels := figures.get("pixels"):
        lines += [
            "",
            f"Pixels, NVDEC against PyAV's rgb24 of the same frames: mean absolute difference "
            f"{pixels['mean_abs']:.2f}, largest {pixels['max_abs']}, "
            f"{pixels['share_above_2']:.2%} of values off by more than 2.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--render", metavar="PATH", help="only render a --json file's figures")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cpu-only", action="store_true", help="the CPU part alone (no GPU)")
    args = parser.parse_args()
    if args.render:
        write_section("NVDEC", render(json.loads(Path(args.render).read_text())))
        return
    figures: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="vivit-nvdec-") as temporary:
        write_inputs(Path(temporary), 0, VIDEO)
        paths = sorted(str(path) for path in Path(temporary).glob("v*.mp4"))
        figures["nvdec"], figures["cpu"] = [], []
        if not args.cpu_only:
            figures["pixels"] = pixel_difference(paths[0])
            print(f"  pixels {figures['pixels']}", flush=True)
        for processes in () if args.cpu_only else PROCESSES:
            figures["nvdec"].append(in_processes(nvdec_worker, paths, processes, args.seconds))
            print(f"  nvdec {figures['nvdec'][-1]}", flush=True)
        cores = len(os.sched_getaffinity(0))
        for processes in sorted({1, cores}):
            figures["cpu"].append(in_processes(cpu_worker, paths, processes, args.seconds))
            print(f"  cpu {figures['cpu'][-1]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(render(figures))


if __name__ == "__main__":
    main()
