"""GPU figures: the model's forward pass on CUDA, and the whole job on one GPU machine.

    python -m benchmarks.gpu --json PATH [--rows N] [--quick]
    python -m benchmarks.gpu --render PATH      # BENCHMARKS.md's GPU section from a --json file

1. Model forward, base size (random weights in Hugging Face layout): this ViViT and
   transformers' sdpa path, fp32 and bf16 / fp16 autocast (as `VideoClassifier` runs them), at
   batch sizes 1, 8 and 32. CUDA-synchronised wall time, median of 5 after 2 warm-ups;
   clips/s and the TFLOP/s that the model's exact FLOP count gives.
2. The job: `prepare_job` + `run_job` on embedded local Ray with every CPU and the GPU (the
   default plan), the base checkpoint at bf16, over N manifest rows that point round robin at 16
   generated 1280x720 H.264 videos (30 fps, 5 s, x264 defaults): end-to-end clips/s, the run
   report's per-stage rates, and what the inference actor reports of its device.
   Where PyNvVideoCodec is installed, the job again with `decode.device=cuda` (NVDEC decode
   actors only) and `auto` (NVDEC and CPU decode actors in one pool).
3. The device check: `vivit-batch validate` with resources.clips_per_forward=4096, which
   cannot fit the GPU, must stop with exit code 2 and say so.

`--quick` runs a tiny model and 64 small-video rows (a smoke test; it also runs on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.model_forward import flops_per_clip
from benchmarks.results import cpu_model, write_section
from vivit_batch.config import ResourcesSection
from vivit_batch.model import DTYPES, load_pretrained
from vivit_batch.testing.checkpoints import BASE, TINY, make_checkpoint
from vivit_batch.video.nvdec import nvdec_installed

DISTINCT_VIDEOS = 16
VIDEO = dict(width=1280, height=720, fps=30, num_frames=150, codec="libx264", content="detailed")
QUICK_VIDEO = dict(VIDEO, width=320, height=240, num_frames=60)


def model_forward(directory: Path, architecture: dict, batches: list[int]) -> list[dict]:
    from transformers import VivitForVideoClassification as HFModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    make_checkpoint(directory, **architecture)
    ours = load_pretrained(directory, device=device)
    theirs = HFModel.from_pretrained(directory, attn_implementation="sdpa")
    theirs = theirs.to(device).eval()  # type: ignore[arg-type]  # transformers' .to stubs
    config = ours.config
    flops = sum(flops_per_clip(config).values())
    figures = []
    for precision, dtype in DTYPES.items():
        for batch in batches:
            size = (batch, config.num_frames, 3, config.image_size, config.image_size)
            pixels = torch.randn(size, device=device)
            for name, model in (("vivit_batch", ours), ("transformers sdpa", theirs)):
                seconds = median_seconds(lambda m=model, x=pixels: m(x), device, dtype)
                figures.append(
                    {
                        "model": name,
                        "precision": precision,
                        "batch": batch,
                        "clips_per_second": batch / seconds,
                        "tflops": flops * batch / seconds / 1e12,
                    }
                )
                print(f"  {figures[-1]}", flush=True)
    return figures


def median_seconds(run, device: str, dtype, warm_ups: int = 2, repeats: int = 5) -> float:
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    times = []
    with torch.inference_mode(), autocast:
        for index in range(warm_ups + repeats):
            synchronise(device)
            started = time.perf_counter()
            run()
            synchronise(device)
            if index >= warm_ups:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def write_inputs(directory: Path, rows: int, video: dict) -> Path:
    """Videos, and a manifest of `rows` rows pointing at them round robin."""
    paths = [directory / f"v{i:02d}.mp4" for i in range(DISTINCT_VIDEOS)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_video, paths, [video] * len(paths)))
    manifest = directory / "manifest.csv"
    lines = [f"{paths[i % len(paths)]},row{i:06d}" for i in range(rows)]
    manifest.write_text("uri,video_id\n" + "\n".join(lines) + "\n")
    return manifest


def _write_video(path: Path, video: dict) -> None:
    from vivit_batch.testing.media import write_video

    write_video(path, **video)


def job(directory: Path, manifest: Path, checkpoint: Path, decode_device: str) -> dict:
    """One run of the job with `decode.device=decode_device`; the first also has `validate`
    refuse a batch that cannot fit the GPU."""
    import ray

    from vivit_batch.config import load_config
    from vivit_batch.job import prepare_job, run_job

    ray.init(address="local", logging_level=logging.WARNING)
    settings = ["model.precision=bf16", "run.max_error_fraction=0"]
    config = load_config(
        None,
        [*settings, f"decode.device={decode_device}"],
        manifest_uri=str(manifest),
        output_uri=str(directory / f"out-{decode_device}"),
        model_source=str(checkpoint),
    )
    report = run_job(prepare_job(config))
    figures = {
        "decode_device": decode_device,
        "rows": report.rows_written,
        "batch_size": report.config["resources"]["batch_size"],
        "status": report.counts["status"],
        "wall_s": report.wall_seconds,
        "throughput": vars(report.throughput),
        "resources": report.resources,
        "inference_devices": report.inference_devices,
        "warnings": report.warnings,
    }
    if decode_device == "cpu":
        figures["oversized_validate"] = oversized_validate(directory, manifest, checkpoint)
    ray.shutdown()
    return figures


def oversized_validate(directory: Path, manifest: Path, checkpoint: Path) -> dict:
    from vivit_batch.cli import main

    arguments = ["--manifest", str(manifest), "--output", str(directory / "validate")]
    arguments += ["--model", str(checkpoint), "--videos", "1"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["validate", *arguments, "--set", "resources.clips_per_forward=4096"])
    return {"code": code, "printed": printed.getvalue()[-2000:]}


def machine() -> dict:
    gpu = "none"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    import av
    import ray

    return {
        "date": datetime.date.today().isoformat(),
        "gpu": gpu,
        "cpu": f"{cpu_model()} ({os.cpu_count()} cores)",
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
        "ray": ray.__version__,
        "av": av.__version__,
    }


def render(figures: dict) -> str:
    m, run = figures["machine"], figures["job"]
    lines = [
        "## GPU",
        "",
        f"`python -m benchmarks.gpu`, {m['date']}, on a lent {m['gpu']}; {m['cpu']}, Python "
        f"{m['python']}, torch {m['torch']}, Ray {m['ray']}, PyAV {m['av']}.",
        "",
        "### Model forward",
        "",
        "Base size (hidden 768, 12 layers, 32x224x224 clips, random weights); one forward pass, "
        "CUDA-synchronised wall time, median of 5 after 2 warm-ups. bf16 and fp16 are autocast "
        "over fp32 weights, as the inference stage runs them. Clips/s (TFLOP/s).",
        "",
        "| precision | batch | vivit-batch | transformers sdpa | vivit-batch / transformers |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows: dict[tuple, dict] = {}
    for f in figures["model_forward"]:
        rows.setdefault((f["precision"], f["batch"]), {})[f["model"]] = f
    for (precision, batch), pair in rows.items():
        ours, theirs = pair["vivit_batch"], pair["transformers sdpa"]
        lines.append(
            f"| {precision} | {batch} | {ours['clips_per_second']:.1f} ({ours['tflops']:.0f}) "
            f"| {theirs['clips_per_second']:.1f} ({theirs['tflops']:.0f}) "
            f"| {ours['clips_per_second'] / theirs['clips_per_second']:.2f}x |"
        )
    speed = run["throughput"]
    [device] = run["inference_devices"] or [{}]
    refused = run["oversized_validate"]
    batch = run.get("batch_size", ResourcesSection().batch_size)  # older figures: the default
    forward = rows.get(("bf16", batch), {}).get("vivit_batch", {}).get("clips_per_second")
    lines += [
        "",
        "### The job on one GPU machine",
        "",
        f"`prepare_job` + `run_job` on embedded local Ray with the default plan "
        f"({json.dumps(run['resources'])}), the base checkpoint at `model.precision=bf16`, "
        f"{run['rows']} manifest rows pointing round robin at {DISTINCT_VIDEOS} generated "
        f"{figures['video']['width']}x{figures['video']['height']} H.264 videos "
        f"({figures['video']['num_frames']} frames at 30 fps), one centre clip each "
        "(32 frames at stride 4).",
        "",
        f"- End to end: {speed['clips_per_second']} clips/s ({run['rows']} clips in "
        f"{run['wall_s']:.1f} s, start-up included); status {run['status']}.",
        f"- Per stage, from the actors' busy time: decode {speed['decode_clips_per_second']} "
        f"clips/s over {run['resources']['decode_actors']} decode actors, inference "
        f"{speed['inference_clips_per_second']} clips/s on the GPU actor.",
        f"- So {the_bound(speed, run['resources'])}.",
        "- The inference stage ran at "
        + (
            f"{speed['inference_clips_per_second'] / forward:.2f}x the bare forward pass at "
            f"batch {batch}, bf16 ({forward:.0f} clips/s, above): the rest of its time is "
            "outside the model (clips from Arrow into pinned memory and to the GPU, "
            "normalisation, top-k, the output columns)."
            if forward
            else "(no forward figure at that batch size)"
        ),
        f"- The inference actor's own report: `{device.get('device')}` {device.get('name')} "
        f"({device.get('memory_gib')} GiB), precision {device.get('precision')}, torch "
        f"{device.get('torch')}, CUDA {device.get('cuda')}.",
        f"- `validate` with `resources.clips_per_forward=4096`: exit code {refused['code']}: "
        f"{_last_error(refused['printed'])}",
    ]
    if len(figures.get("jobs", [])) > 1:
        lines += decode_devices_table(figures["jobs"])
    return "\n".join(lines) + "\n"


def decode_devices_table(runs: list[dict]) -> list[str]:
    """The same job with decoding on the CPU, on NVDEC, and on both (`decode.device`)."""
    lines = [
        "",
        "#### Decoding on the CPU, on NVDEC, and on both",
        "",
        "The same manifest and model, `decode.device` set as the first column. *GPU busy*: "
        "the end-to-end rate over the inference stage's own (the share of the run the GPU "
        "actor was labelling, at most).",
        "",
        "| decode.device | CPU decode actors | NVDEC decode actors | end to end, clips/s | "
        "decode, clips/s (CPU / NVDEC actors) | clips decoded on NVDEC | inference, clips/s "
        "| GPU busy | decoders busy | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        speed, plan = run["throughput"], run["resources"]
        kinds = (
            f" ({speed['cpu_decode_clips_per_second']} / {speed['nvdec_decode_clips_per_second']})"
            if plan.get("gpu_decoders")
            else ""
        )
        lines.append(
            f"| {run['decode_device']} | {plan['decode_actors']} | {plan.get('gpu_decoders', 0)} "
            f"| {speed['clips_per_second']} | {speed['decode_clips_per_second']}{kinds} "
            f"| {speed.get('nvdec_clips', 0) / speed['clips']:.0%} "
            f"| {speed['inference_clips_per_second']} "
            f"| {speed['clips_per_second'] / speed['inference_clips_per_second']:.0%} "
            f"| {speed['clips_per_second'] / decoders_rate(speed, plan):.0%} "
            f"| {run['status']} |"
        )
    return lines


def decoders_rate(speed: dict, plan: dict) -> float:
    """The decode actors' rates added up: what the pool gives with every actor kept busy."""
    if not plan.get("gpu_decoders"):
        return speed["decode_clips_per_second"]
    kinds = (speed["cpu_decode_clips_per_second"], speed["nvdec_decode_clips_per_second"])
    return sum(rate or 0.0 for rate in kinds)


def the_bound(speed: dict, plan: dict) -> str:
    """Which stage kept the run to its rate: the one whose actors were busy most of it."""
    gpu = speed["clips_per_second"] / speed["inference_clips_per_second"]
    decoders = speed["clips_per_second"] / decoders_rate(speed, plan)
    busy = f"the GPU actor was busy at most {gpu:.0%} of the run, the decoders {decoders:.0%}"
    if max(gpu, decoders) < BOUND_BUSY:
        return f"{busy}: neither bound it (start-up and the decode pool's last calls)"
    return f"{busy}: the job is {'GPU' if gpu >= decoders else 'decode'}-bound"


BOUND_BUSY = 0.8
"""The share of a run a stage's actors must be busy for it to be named the run's bound."""


def _last_error(printed: str) -> str:
    errors = [line for line in printed.splitlines() if line.startswith("error: ")]
    return f"`{errors[-1]}`" if errors else "(no error printed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--render", metavar="PATH", help="only render a --json file's figures")
    parser.add_argument("--rows", type=int, default=2000, help="manifest rows for the job")
    parser.add_argument("--quick", action="store_true", help="tiny model, small videos")
    parser.add_argument(
        "--decode-devices",
        default="cpu,cuda,auto" if nvdec_installed() and torch.cuda.is_available() else "cpu",
        help="the job once per decode.device, the first with cpu (default: cpu, and cuda and "
        "auto where PyNvVideoCodec is installed and CUDA can be used)",
    )
    args = parser.parse_args()
    if args.render:
        write_section("GPU", render(json.loads(Path(args.render).read_text())))
        return
    architecture = TINY if args.quick else BASE
    video = QUICK_VIDEO if args.quick else VIDEO
    rows = 64 if args.quick else args.rows
    figures: dict[str, Any] = {"machine": machine(), "video": video}

    def save() -> None:  # after each part: a run cut short keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="vivit-gpu-") as temporary:
        scratch = Path(temporary)
        print("model forward", flush=True)
        batches = [1, 2] if args.quick else [1, 8, 32]
        figures["model_forward"] = model_forward(scratch / "checkpoint", architecture, batches)
        save()
        print("inputs", flush=True)
        manifest = write_inputs(scratch, rows, video)
        figures["jobs"] = []
        for device in args.decode_devices.split(","):
            print(f"job, decode.device={device}", flush=True)
            figures["jobs"].append(job(scratch, manifest, scratch / "checkpoint", device))
            figures["job"] = figures["jobs"][0]
            save()
    print(render(figures))


if __name__ == "__main__":
    main()
