"""Seconds per 32x224x224 clip, fp32 on CPU: this ViViT vs transformers' (sdpa, eager) vs a GEMM.

    python -m benchmarks.model_forward [--quick] [--threads N] [--profile] [--no-write]

Builds a random base-size `transformers.VivitForVideoClassification` (hidden 768, 12 layers, 12
heads, MLP 3072, 400 labels), saves it with `save_pretrained`, and loads the same weights three
ways: `vivit_batch.model.load_pretrained`, and transformers with attn_implementation "sdpa" and
"eager". After a warm-up forward of each (whose logits are compared: max abs difference), every
repeat times one forward of each variant at each batch size, in an order that rotates from repeat
to repeat, under `torch.inference_mode()`, plus a plain fp32 GEMM of the model's biggest shape
((3137*B, 768) x (768, 3072), and the MLP down-projection's shape) on the same threads.

Reported per clip: the median (and the fastest) wall seconds, the median CPU seconds (all
threads), the achieved GFLOP/s for the model's exact FLOP count (see `flops_per_clip`), that rate
as a fraction of the GEMM's, and the paired speed-up over transformers: the median over repeats of
the ratio of neighbouring runs, which is steadier than a ratio of medians on a shared machine.
`--profile` adds a torch.profiler breakdown (GEMM, attention, element-wise) of one batch-1 forward
of this model and of transformers' sdpa path.
The Markdown goes into the "## Model forward" section of BENCHMARKS.md unless `--no-write`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from benchmarks.results import cpu_model, load_average, write_section
from vivit_batch.model import VivitConfig, load_pretrained
from vivit_batch.testing.checkpoints import BASE, make_checkpoint

SPEEDUP_TARGET = 1.1  # over transformers' sdpa path
GEMM_FRACTION_TARGET = 0.85
VARIANTS = ("vivit_batch", "hf sdpa", "hf eager")


def flops_per_clip(config: VivitConfig) -> dict[str, int]:
    """Multiply-accumulates x 2 of one clip at the configured size, by part.

    Counts the matrix products only: patch embedding, Q/K/V and output projections, attention
    scores (QK^T) and weighted values (AV), the MLP, the classifier on the CLS token. LayerNorm,
    softmax, GELU, bias and residual adds are O(tokens x width) and left out (under 0.3%).
    """
    patches = config.token_grid[0] * config.token_grid[1] * config.token_grid[2]
    tokens = 1 + patches
    width, mlp, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tubelet = config.num_channels * config.tubelet_size[0] * config.tubelet_size[1]
    tubelet *= config.tubelet_size[2]
    return {
        "patch embedding": 2 * patches * tubelet * width,
        "QKV projections": layers * 2 * tokens * width * 3 * width,
        "output projection": layers * 2 * tokens * width * width,
        "attention QK^T": layers * 2 * tokens * tokens * width,  # all heads: sum of head dims
        "attention AV": layers * 2 * tokens * tokens * width,
        "MLP": layers * 2 * 2 * tokens * width * mlp,
        "classifier": 2 * width * config.num_labels,
    }


def build_models(directory: Path) -> dict[str, torch.nn.Module]:
    """The same random weights three ways (non-zero LayerNorm shifts and biases)."""
    from transformers import VivitForVideoClassification as HFModel

    make_checkpoint(directory, **BASE)
    models: dict[str, torch.nn.Module] = {"vivit_batch": load_pretrained(directory)}
    for implementation in ("sdpa", "eager"):
        hf = HFModel.from_pretrained(directory, attn_implementation=implementation)
        models[f"hf {implementation}"] = hf.eval().requires_grad_(False)
    return models


def forward(name: str, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "vivit_batch":
        return lambda pixels: model(pixels).logits
    return lambda pixels: model(pixel_values=pixels).logits


def gemm(rows: int, inner: int, cols: int) -> Callable[[], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(inner, cols, generator=generator)
    return lambda: torch.matmul(a, b)


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def gemm_seconds(run: Callable[[], object], calls: int = 5) -> tuple[float, float]:
    """The medians of a few back-to-back calls (each is ~0.1 s; one would be noisy)."""
    walls, cpus = zip(*(timed(run) for _ in range(calls)), strict=True)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed repeats instead of 5")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 5, --quick 2)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler breakdown")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    command = "python -m benchmarks.model_forward " + " ".join(sys.argv[1:])

    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp))
        config = VivitConfig.from_json_file(Path(tmp) / "config.json")
    flops = sum(flops_per_clip(config).values())
    generator = torch.Generator().manual_seed(1)
    shape = (config.num_frames, config.num_channels, config.image_size, config.image_size)
    inputs = {b: torch.randn((b, *shape), generator=generator) for b in args.batch_sizes}
    tokens = 1 + config.token_grid[0] * config.token_grid[1] * config.token_grid[2]
    width, mlp = config.hidden_size, config.intermediate_size
    gemms = {(b, "up"): gemm(b * tokens, width, mlp) for b in args.batch_sizes}
    gemms |= {(b, "down"): gemm(b * tokens, mlp, width) for b in args.batch_sizes}

    with torch.inference_mode():
        print("warm-up and parity ...", file=sys.stderr, flush=True)
        parity = {}
        for b, pixels in inputs.items():
            logits = {name: forward(name, model)(pixels) for name, model in models.items()}
            for name in VARIANTS[1:]:
                diff = (logits["vivit_batch"] - logits[name]).abs().max().item()
                same_top1 = torch.equal(logits["vivit_batch"].argmax(-1), logits[name].argmax(-1))
                parity[(b, name)] = (diff, same_top1)
                print(f"batch {b}: max |logits - {name}| = {diff:.2e}", file=sys.stderr)
        for run in gemms.values():
            run()

        # (batch, variant) -> seconds per clip (per call for the GEMMs), one per repeat
        wall: dict[tuple[int, str], list[float]] = defaultdict(list)
        cpu: dict[tuple[int, str], list[float]] = defaultdict(list)
        for repeat in range(repeats):
            order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
            for b, pixels in inputs.items():
                for name in order:
                    seconds = timed(partial(forward(name, models[name]), pixels))
                    wall[(b, name)].append(seconds[0] / b)
                    cpu[(b, name)].append(seconds[1] / b)
                for kind in ("up", "down"):
                    seconds = gemm_seconds(gemms[(b, kind)])
                    wall[(b, f"gemm {kind}")].append(seconds[0])
                    cpu[(b, f"gemm {kind}")].append(seconds[1])
                print(
                    f"repeat {repeat + 1}/{repeats} batch {b}, s/clip (CPU s/clip): "
                    + ", ".join(
                        f"{n} {wall[(b, n)][-1]:.2f} ({cpu[(b, n)][-1]:.2f})" for n in order
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        profile = profile_breakdown(models, inputs[min(inputs)][:1]) if args.profile else None

    section = render_section(
        config=config,
        flops=flops,
        wall=wall,
        cpu=cpu,
        parity=parity,
        profile=profile,
        batch_sizes=args.batch_sizes,
        gemm_flops={b: 2 * b * tokens * width * mlp for b in args.batch_sizes},
        threads=args.threads,
        repeats=repeats,
        command=command,
        load=(load_before, load_average()),
    )
    print(section)
    if not args.no_write:
        write_section("Model forward", section)


CATEGORIES = (
    ("GEMM (linear, conv)", ("addmm", "mm", "bmm", "matmul", "convolution", "linear")),
    ("attention (SDPA kernel)", ("scaled_dot_product", "flash_attention")),
    ("softmax", ("softmax",)),
)


def profile_breakdown(models: dict, pixels: torch.Tensor) -> dict[str, dict[str, float]]:
    """Self CPU seconds by category for one forward of this model and of transformers' sdpa."""
    from torch.profiler import ProfilerActivity, profile

    breakdown = {}
    for name in VARIANTS[:2]:
        run = forward(name, models[name])
        run(pixels)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(pixels)
        parts: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            op = event.key.removeprefix("aten::")
            category = next(
                (label for label, keys in CATEGORIES if any(k in op for k in keys)),
                "element-wise and copies",
            )
            parts[category] += event.self_cpu_time_total / 1e6
        print(f"\n{name}:", file=sys.stderr)
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr
        )
        breakdown[name] = dict(parts)
    return breakdown


def render_section(
    *,
    config: VivitConfig,
    flops: int,
    wall: dict[tuple[int, str], list[float]],
    cpu: dict[tuple[int, str], list[float]],
    parity: dict[tuple[int, str], tuple[float, bool]],
    profile: dict[str, dict[str, float]] | None,
    batch_sizes: list[int],
    gemm_flops: dict[int, int],
    threads: int,
    repeats: int,
    command: str,
    load: tuple[str, str],
) -> str:
    median = {key: statistics.median(times) for key, times in wall.items()}
    parts = flops_per_clip(config)
    attention = parts["attention QK^T"] + parts["attention AV"]
    lines = [
        "## Model forward",
        "",
        f"`{command}`, {datetime.date.today().isoformat()}, {cpu_model()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} threads, fp32, "
        f"`torch.inference_mode()`, {repeats} timed repeats after a warm-up; load average "
        f"{load[0]} before, {load[1]} after (other work shares this machine).",
        "",
        f"Base ViViT (hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"{config.num_attention_heads} heads, MLP {config.intermediate_size}, "
        f"{config.num_labels} labels), random weights saved by transformers and loaded by both. "
        f"One {config.num_frames}x{config.image_size}x{config.image_size} clip is "
        f"{flops / 1e9:.1f} GFLOP (2 per multiply-add: {attention / flops:.0%} attention "
        f"QK^T and AV, {parts['MLP'] / flops:.0%} MLP, "
        f"{parts['QKV projections'] / flops:.0%} QKV, "
        f"{parts['output projection'] / flops:.0%} output projection, "
        f"{parts['patch embedding'] / flops:.1%} patch embedding).",
        "",
        "| batch | variant | s/clip (median) | s/clip (fastest) | CPU s/clip (median) "
        "| GFLOP/s | of GEMM rate | vivit_batch speed-up: wall (CPU) "
        "| max abs logit diff vs vivit_batch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for b in batch_sizes:
        ours = (b, "vivit_batch")
        gemm_rate = gemm_flops[b] / median[(b, "gemm up")] / 1e9  # the reference GEMM
        for name in VARIANTS:
            key = (b, name)
            rate = flops / median[key] / 1e9
            speedup, diff = "", ""
            if name != "vivit_batch":
                speedup = (
                    f"{paired_ratio(wall[key], wall[ours]):.2f}x "
                    f"({paired_ratio(cpu[key], cpu[ours]):.2f}x)"
                )
                diff = f"{parity[key][0]:.1e}" + ("" if parity[key][1] else " (top-1 differs)")
            lines.append(
                f"| {b} | {name} | {median[key]:.2f} | {min(wall[key]):.2f} "
                f"| {statistics.median(cpu[key]):.2f} | {rate:.0f} | {rate / gemm_rate:.0%} "
                f"| {speedup} | {diff} |"
            )
        for kind, shape in (("up", "768) x (768, 3072"), ("down", "3072) x (3072, 768")):
            rate = gemm_flops[b] / median[(b, f"gemm {kind}")] / 1e9
            rows = gemm_flops[b] // (2 * config.hidden_size * config.intermediate_size)
            lines.append(
                f"| {b} | GEMM ({rows}, {shape}) | | | | {rate:.0f} | {rate / gemm_rate:.0%} | | |"
            )

        ratio = paired_ratio(wall[(b, "hf sdpa")], wall[ours])
        fraction = {
            (clock_name, kind): gemm_fraction(clock, b, kind, flops, gemm_flops[b])
            for clock_name, clock in (("wall", wall), ("cpu", cpu))
            for kind in ("up", "down")
        }
        met = fraction[("wall", "up")] >= GEMM_FRACTION_TARGET
        verdicts.append(
            f"- batch {b}: at least {SPEEDUP_TARGET}x transformers' sdpa path: {ratio:.2f}x "
            f"({paired_ratio(cpu[(b, 'hf sdpa')], cpu[ours]):.2f}x in CPU time), "
            f"{'met' if ratio >= SPEEDUP_TARGET else 'missed'}; at least "
            f"{GEMM_FRACTION_TARGET:.0%} of the GEMM rate: {fraction[('wall', 'up')]:.0%} "
            f"({fraction[('cpu', 'up')]:.0%} in CPU time; {fraction[('wall', 'down')]:.0%} of "
            f"the down-projection GEMM's), {'met' if met else 'missed'}"
        )
    lines += [
        "",
        'GFLOP/s is the clip\'s FLOP count over the median wall time; "of GEMM rate" compares it '
        "with the GEMM of the MLP up-projection's shape, (3137 x batch, 768) x (768, 3072), timed "
        "in the same repeats on the same threads. CPU seconds are the process's, all threads. "
        "Speed-ups and the target figures below are paired: the median over repeats of the ratio "
        "within one repeat, which the load swings of a shared machine disturb less than a ratio "
        "of medians.",
        "",
        "Targets:",
        *verdicts,
    ]
    if profile:
        categories = sorted({c for parts in profile.values() for c in parts})
        lines += [
            "",
            "Profile of one batch-1 forward (torch.profiler, self CPU seconds):",
            "",
            "| variant | " + " | ".join(categories) + " | total |",
            "| --- | " + " | ".join("---" for _ in categories) + " | --- |",
        ]
        for name, seconds in profile.items():
            total = sum(seconds.values())
            cells = [
                f"{seconds.get(c, 0):.2f} ({seconds.get(c, 0) / total:.0%})" for c in categories
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {total:.2f} |")
    return "\n".join(lines) + "\n"


def gemm_fraction(
    clock: dict[tuple[int, str], list[float]], batch: int, kind: str, flops: int, gemm_flops: int
) -> float:
    """This model's FLOP rate over the GEMM's, paired per repeat."""
    as_gemm = [t * flops / gemm_flops for t in clock[(batch, f"gemm {kind}")]]
    return paired_ratio(as_gemm, clock[(batch, "vivit_batch")])


def paired_ratio(theirs: list[float], ours: list[float]) -> float:
    """Median over repeats of their time / our time in the same repeat."""
    return statistics.median(t / o for t, o in zip(theirs, ours, strict=True))


if __name__ == "__main__":
    main()
