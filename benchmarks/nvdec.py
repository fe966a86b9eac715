"""What NVDEC could give the job: the GPU's video decoders against the CPU decode path, on the
GPU section's videos (1280x720 H.264, 150 frames, x264 defaults: one keyframe).

    python -m benchmarks.nvdec --json PATH [--seconds 10]
    python -m benchmarks.nvdec --render PATH    # BENCHMARKS.md's section from --json

Needs PyNvVideoCodec (NVIDIA's wheel bundles its demuxer; 2.2.4, 27 MB) and a GPU; written for
the next lent machine and not yet run (none was lent since). It measures:

1. NVDEC: P processes (1, 2, 4, 7, 14; H100/H200 have 7 NVDEC engines), each with a
   `SimpleDecoder` (NV12 in device memory, as the stage takes it, reconfigured from file to
   file) decoding the
   centre clip's 32 frames at stride 4 of each video in turn for `--seconds`; clips/s, and the
   frames through the decoder (from the keyframe to the clip's last frame) per second and per
   engine.
   The decode stage's own NVDEC path (`decode.device=cuda`: PyAV reads the header and first
   frame, a decoder per video, resize and crop on the GPU, clips back to the host) in the same
   processes, for what it adds to the bare decoder.
2. The CPU path in the same run: the decode stage (`decode_video`, sandboxed worker left out)
   in one process per core for the same time: clips/s, and per core.
3. Parity: the NVDEC path's clips (`nvdec_clips`: NVDEC's planes made RGB as swscale makes
   them, resized and cropped on the GPU; and, as a check of the resize alone, PyAV's rgb24
   frames resized and cropped the same way) against the CPU path's clips: pixel differences,
   and the base model's embeddings (the issue's criterion: within 1%, relative).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np

from benchmarks.gpu import DISTINCT_VIDEOS, VIDEO, machine, write_inputs
from benchmarks.results import write_section
from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.video.decode import DecodeRequest, assemble_clips, decode_video
from vivit_batch.video.nvdec import decode_on_device, nvdec_clips, resized_on_device
from vivit_batch.video.sampling import frame_positions

SAMPLING = SamplingConfig(num_frames=32)
PROCESSES = (1, 2, 4, 7, 14)
NVDEC_ENGINES = 7


def clip_frames() -> list[int]:
    return frame_positions(cast(int, VIDEO["num_frames"]), SAMPLING)[0].tolist()


def nvdec_worker(place: int, paths: list[str], seconds: float, results) -> None:
    import PyNvVideoCodec as nvc
    import torch

    indices = clip_frames()
    decoder, clips, started = None, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        path = paths[clips % len(paths)]
        if decoder is None:
            decoder = nvc.SimpleDecoder(
                path, use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE
            )
        else:
            decoder.reconfigure_decoder(path)
        frames = decoder.get_batch_frames_by_index(indices)
        torch.stack([torch.from_dlpack(frame) for frame in frames])
        torch.cuda.synchronize()
        clips += 1
    results.put((clips, time.perf_counter() - started))


def stage_worker(place: int, paths: list[str], seconds: float, results) -> None:
    """The decode stage's own NVDEC path (`decode.device=cuda`, in the process): PyAV reads
    the header and the first frame, a decoder per video, resize and crop, clips to the host."""
    decode_for(seconds, paths, DecodeConfig(isolation="none", device="cuda"), results)


def cpu_worker(place: int, paths: list[str], seconds: float, results) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[place % len(cores)]})  # one worker a core
    decode_for(seconds, paths, DecodeConfig(isolation="none"), results)


def decode_for(seconds: float, paths: list[str], config: DecodeConfig, results) -> None:
    """Decode `paths` in turn as the decode stage does, for `seconds`; clips and seconds to
    `results`."""
    clips, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        request = DecodeRequest(paths[clips % len(paths)], SAMPLING, ProcessorConfig(), "v", config)
        decode_on_device(request)
        clips += 1
    results.put((clips, time.perf_counter() - started))


def in_processes(worker, paths: list[str], processes: int, seconds: float) -> dict:
    context = multiprocessing.get_context("spawn")  # one CUDA context per process
    results = context.Queue()
    workers = [
        context.Process(target=worker, args=(i, paths[i:] + paths[:i], seconds, results))
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


def nvdec_clip(request: DecodeRequest) -> np.ndarray:
    """The clip as the decode stage's NVDEC path makes it (`nvdec_clips`)."""
    decoded = nvdec_clips(replace(request, config=replace(request.config, device="cuda")))
    assert decoded is not None, f"NVDEC did not take {request.uri}"
    return decoded.clips[0]


def pyav_clip(request: DecodeRequest) -> np.ndarray:
    """The clip from PyAV's rgb24 frames (as the CPU path converts them), resized and cropped as
    the NVDEC path resizes and crops: the resize's own share of the difference."""

    pictures = resized_on_device(pyav_frames(request.uri), request.processor).cpu().numpy()
    return assemble_clips([list(pictures)], request.processor, SAMPLING)[0]


def pyav_frames(path: str):
    """The same frames from PyAV's rgb24 conversion (swscale), as the CPU path converts them."""
    import av
    import torch

    wanted, found = set(clip_frames()), {}
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(np.stack([found[index] for index in clip_frames()]))


def parity(paths: list[str], clip_of, device: str) -> dict:
    """The clips `clip_of(request)` makes against the CPU path's (`decode_video`): pixels, and
    the base model's embeddings on `device` (fp32, random weights): largest relative
    difference, the issue's criterion being 1%."""
    import torch

    from vivit_batch.inference import ClipModel
    from vivit_batch.model import load_pretrained
    from vivit_batch.testing.checkpoints import BASE, make_checkpoint

    processor = ProcessorConfig()
    with tempfile.TemporaryDirectory(prefix="vivit-nvdec-model-") as directory:
        make_checkpoint(Path(directory), **BASE)
        model = ClipModel(load_pretrained(directory, device=device), processor).eval()
    pixels, relative = [], []
    for path in paths:
        request = DecodeRequest(path, SAMPLING, processor, "v", DecodeConfig(isolation="none"))
        expected = torch.from_numpy(decode_video(request).clips[0]).to(device)
        got = torch.from_numpy(clip_of(request)).to(device)
        pixels.append((got.int() - expected.int()).abs().float())
        with torch.inference_mode():
            embeddings = model(torch.stack([expected, got])).embedding
        difference = (embeddings[1] - embeddings[0]).norm() / embeddings[0].norm()
        relative.append(float(difference))
    every = torch.cat([p.flatten() for p in pixels])
    return {
        "videos": len(paths),
        "mean_abs": float(every.mean()),
        "max_abs": int(every.max()),
        "share_above_2": float((every > 2).float().mean()),
        "embedding_relative_max": max(relative),
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
    decoders = (
        ("NVDEC", figures["nvdec"]),
        ("NVDEC, the stage's path", figures.get("stage", [])),
        ("CPU (PyAV)", figures["cpu"]),
    )
    for name, runs in decoders:
        for run in runs:
            frames = run["clips_per_second"] * frames_per_clip
            on_nvdec = name.startswith("NVDEC")
            units = min(run["processes"], NVDEC_ENGINES) if on_nvdec else run["processes"]
            lines.append(
                f"| {name} | {run['processes']} | {run['clips_per_second']:.1f} | {frames:,.0f} "
                f"| {frames / units:,.0f} |"
            )
    if not figures["nvdec"]:
        lines += [
            "",
            "NVDEC: not measured yet (`--cpu-only`: no GPU was lent since this was written).",
        ]
    sources = {"pyav": "PyAV's rgb24 frames", "nvdec": "NVDEC's planes (the stage's path)"}
    for source, found in figures["parity"].items():
        lines += [
            "",
            f"Clips from {sources[source]}, resized and cropped in torch (float, rounded) against "
            f"the CPU path's, {found['videos']} videos: pixels off by {found['mean_abs']:.3f} on "
            f"average, {found['max_abs']} at most, {found['share_above_2']:.3%} by more than 2; "
            f"the base model's embeddings (fp32) {found['embedding_relative_max']:.2e} apart at "
            "most (relative).",
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

    def save() -> None:  # after each part: a run cut short keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))

    with tempfile.TemporaryDirectory(prefix="vivit-nvdec-") as temporary:
        write_inputs(Path(temporary), 0, VIDEO)
        paths = sorted(str(path) for path in Path(temporary).glob("v*.mp4"))
        figures["nvdec"], figures["cpu"] = [], []
        device = "cpu" if args.cpu_only else "cuda"
        figures["parity"] = {"pyav": parity(paths[:4], pyav_clip, device)}
        if not args.cpu_only:
            figures["parity"]["nvdec"] = parity(paths, nvdec_clip, device)
        print(f"  parity {figures['parity']}", flush=True)
        save()
        figures["stage"] = []
        for processes in () if args.cpu_only else PROCESSES:
            figures["nvdec"].append(in_processes(nvdec_worker, paths, processes, args.seconds))
            print(f"  nvdec {figures['nvdec'][-1]}", flush=True)
            figures["stage"].append(in_processes(stage_worker, paths, processes, args.seconds))
            print(f"  stage {figures['stage'][-1]}", flush=True)
            save()
        cores = len(os.sched_getaffinity(0))
        for processes in sorted({1, cores}):
            figures["cpu"].append(in_processes(cpu_worker, paths, processes, args.seconds))
            print(f"  cpu {figures['cpu'][-1]}", flush=True)
            save()
    print(render(figures))


if __name__ == "__main__":
    main()
