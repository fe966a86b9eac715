"""The model nearer the hardware: ways to run the same forward pass, at one batch size.

    python -m benchmarks.gpu_variants --json PATH [--batch 32] [--quick]
    python -m benchmarks.gpu_variants --render PATH   # BENCHMARKS.md's section from --json

What the inference stage runs (`ClipModel`: uint8 clips on the device, normalised there, bf16
autocast over fp32 weights) against: the weights cast to bf16 (no autocast), `torch.compile`
(inductor), inductor with CUDA graphs (`mode="reduce-overhead"`), and the attention kernel
forced to flash attention. For each: clips/s, TFLOP/s from the model's exact FLOP count, the
share of the GPU's dense bf16 peak (MFU), the largest difference of the embedding from the
stage's way (relative to its norm), and the attention kernels the profiler saw. Median of 10
CUDA-synchronised passes after 3 warm-ups (compilation happens in the warm-ups, timed apart).
`--quick`: a tiny model on the CPU, CUDA graphs left out (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.gpu import machine
from benchmarks.model_forward import flops_per_clip
from benchmarks.results import write_section
from vivit_batch.inference import ClipModel
from vivit_batch.model import load_pretrained
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.checkpoints import BASE, TINY, make_checkpoint

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
"""Dense bf16 tensor-core peak, by the name's model (NVIDIA's data sheets, SXM)."""
WARM_UPS, REPEATS = 3, 10


Made = tuple[Callable[[torch.Tensor], Any], bool]
"""A way to run the forward pass, and whether it runs under bf16 autocast."""


def variants(model_dir: Path, device: str) -> dict[str, Callable[[], Made]]:
    """name -> how to make it."""

    def stage_way() -> Made:
        return ClipModel(load_pretrained(model_dir, device=device), ProcessorConfig()), True

    def bf16_weights() -> Made:
        model = load_pretrained(model_dir, device=device).to(torch.bfloat16)
        return ClipModel(model, ProcessorConfig()), False

    def inductor() -> Made:
        return torch.compile(stage_way()[0]), True

    def cuda_graphs() -> Made:
        return torch.compile(stage_way()[0], mode="reduce-overhead"), True

    made = {"stage (autocast)": stage_way, "bf16 weights": bf16_weights, "inductor": inductor}
    if device == "cuda":
        made["inductor + CUDA graphs"] = cuda_graphs
    return made


def measure(module: Callable, autocast: bool, clips: torch.Tensor, flash: bool) -> dict:
    device = clips.device.type
    cast = torch.autocast(device, dtype=torch.bfloat16, enabled=autocast)
    backend = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if flash else contextlib.nullcontext()
    times, output = [], None
    with torch.inference_mode(), cast, backend:
        started = time.perf_counter()
        for _ in range(WARM_UPS):
            output = module(clips)
        synchronise(device)
        warm_up_s = time.perf_counter() - started
        for _ in range(REPEATS):
            synchronise(device)
            started = time.perf_counter()
            output = module(clips)
            synchronise(device)
            times.append(time.perf_counter() - started)
        kernels = attention_kernels(module, clips) if device == "cuda" else []
    assert output is not None
    return {
        "seconds": statistics.median(times),
        "warm_up_s": warm_up_s,
        "embedding": output.embedding.float().clone(),
        "attention_kernels": kernels,
    }


def attention_kernels(module: Callable, clips: torch.Tensor) -> list[str]:
    """The GPU kernels of one pass whose names say attention (flash, efficient, cudnn...)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        module(clips)
        synchronise("cuda")
    names = {event.name for event in profile.events() if event.device_type.name == "CUDA"}
    words = ("flash", "fmha", "attention", "attn", "cudnn")
    return sorted(name[:120] for name in names if any(w in name.lower() for w in words))


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(model_dir: Path, batch: int, device: str) -> list[dict]:
    config = load_pretrained(model_dir).config
    flops = sum(flops_per_clip(config).values()) * batch
    size = (batch, config.num_frames, config.image_size, config.image_size, 3)
    clips = torch.randint(0, 256, size, dtype=torch.uint8, device=device)
    peak = next((p for name, p in PEAK_BF16_TFLOPS.items() if name in gpu_name(device)), None)
    figures: list[dict[str, Any]] = []
    reference = None
    for flash in (False, True):
        for name, make in variants(model_dir, device).items():
            if flash and name != "stage (autocast)":
                continue
            try:
                found = measure(*make(), clips, flash)
            except Exception as error:  # noqa: BLE001 (a variant that cannot run says why)
                figures.append({"variant": name, "flash": flash, "error": repr(error)[:300]})
                print(f"  {figures[-1]}", flush=True)
                continue
            embedding = found.pop("embedding")
            reference = embedding if reference is None else reference
            tflops = flops / found["seconds"] / 1e12
            difference = (embedding - reference).norm(dim=1) / reference.norm(dim=1)
            figures.append(
                {
                    "variant": name + (", flash forced" if flash else ""),
                    "batch": batch,
                    "clips_per_second": batch / found["seconds"],
                    "tflops": tflops,
                    "mfu": tflops / peak if peak else None,
                    "embedding_relative_difference": float(difference.max()),
                    **found,
                }
            )
            print(f"  {figures[-1]}", flush=True)
    return figures


def gpu_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "CPU"


def render(figures: dict) -> str:
    m = figures["machine"]
    lines = [
        "## GPU model variants",
        "",
        f"`python -m benchmarks.gpu_variants`, {m['date']}, on {m['gpu']}; torch {m['torch']}. "
        "Base-size model, random weights, uint8 clips already on the device; median of "
        f"{REPEATS} passes after {WARM_UPS} warm-ups (whose time includes compiling). MFU: "
        "share of the dense bf16 peak (989 TFLOP/s on H100/H200 SXM). Difference: largest "
        "relative difference of an embedding from the stage's way.",
        "",
        "| variant | batch | clips/s | TFLOP/s | MFU | difference | warm-up s | attention |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures["variants"]:
        if "error" in f:
            lines.append(f"| {f['variant']} | | failed: `{f['error']}` | | | | | |")
            continue
        mfu = f"{f['mfu']:.0%}" if f["mfu"] else "-"
        lines.append(
            f"| {f['variant']} | {f['batch']} | {f['clips_per_second']:.1f} | {f['tflops']:.0f} "
            f"| {mfu} | {f['embedding_relative_difference']:.1e} | {f['warm_up_s']:.1f} "
            f"| {', '.join(f['attention_kernels'])[:200] or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--render", metavar="PATH", help="only render a --json file's figures")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="tiny model on the CPU")
    args = parser.parse_args()
    if args.render:
        write_section("GPU model variants", render(json.loads(Path(args.render).read_text())))
        return
    device = "cpu" if args.quick else "cuda"
    with tempfile.TemporaryDirectory(prefix="vivit-variants-") as temporary:
        model_dir = Path(temporary) / "checkpoint"
        make_checkpoint(model_dir, **(TINY if args.quick else BASE))
        batch = 2 if args.quick else args.batch
        figures = {"machine": machine(), "variants": run(model_dir, batch, device)}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    print(render(figures))


if __name__ == "__main__":
    main()
