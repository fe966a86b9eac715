"""The inference stage's own cost, apart from the model's.

    python -m benchmarks.inference_stage                  # host overhead, one CPU core
    python -m benchmarks.inference_stage --device cuda    # the stage against the bare forward
    python -m benchmarks.inference_stage --render PATH    # BENCHMARKS.md's section from --json

Inputs: one 320x240 H.264 video decoded by the decode stage (32 frames at stride 4, 224x224
crops: 4.8 MB of uint8 a clip), its row repeated into batches of 8 and 32 rows with clips of
their own (four batches of each size, used in turn, so that no clip stays in a cache).

- cpu: the stage (`InferenceStage.__call__`, what an inference actor runs per batch) with a
  model that does nothing: `classifier.forward` returns zeros of the output's shapes, so what
  is timed is the host's work per batch (clips read from Arrow and copied once into the staging
  buffer, averaging and top-k on tiny tensors, the output columns). Pinned to one core, torch
  threads 1. Baseline in the same run: one copy of each batch's clips into a buffer (memcpy,
  the floor of any path that hands clips to a device). Median of 20 batches after 3 warm-ups.
- cuda: the base-size model at bf16 (random weights): the stage labelling the batches one at a
  time, and two at a time from two threads (as a GPU actor runs them), against the bare
  forward pass (`ClipModel` on clips already on the GPU) at the same batch and precision.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from benchmarks.results import load_average, machine, write_section
from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.model import VideoClassifierOutput, load_pretrained
from vivit_batch.output.schema import CLIPS
from vivit_batch.processor import ProcessorConfig
from vivit_batch.stages.decode import DecodeStage, DecodeStageOptions
from vivit_batch.stages.inference import InferenceStage, InferenceStageOptions
from vivit_batch.testing.checkpoints import BASE, make_checkpoint
from vivit_batch.testing.media import write_video

BATCHES = (8, 32)
DISTINCT = 4
WARM_UPS, REPEATS = 3, 20
PROCESSOR = ProcessorConfig()
BEFORE = (
    "Before (main at 659e6aa, 2026-12-06, this machine, the same batch of 8 and null model, its "
    "normalisation on the CPU replaced by the copy that `pin_memory` made there): 3.08 ms per "
    "clip; each clip was copied three times (Arrow to Python bytes, `np.concatenate`, "
    "`pin_memory`) and each row's columns built in Python."
)


class NullForward(torch.nn.Module):
    """A model that does nothing: zeros of the output's shapes, on the clips' device."""

    def __init__(self, labels: int, hidden: int):
        super().__init__()
        self.labels, self.hidden = labels, hidden

    def forward(self, clips: torch.Tensor) -> VideoClassifierOutput:
        zeros = torch.zeros((len(clips), self.labels + self.hidden), device=clips.device)
        return VideoClassifierOutput(zeros[:, : self.labels], zeros[:, self.labels :])


def decoded_row(directory: Path) -> pa.Table:
    video = write_video(directory / "video.mp4", num_frames=140, width=320, height=240)
    options = DecodeStageOptions(
        SamplingConfig(num_frames=32), PROCESSOR, DecodeConfig(isolation="none")
    )
    rows = pa.table({"video_id": ["v"], "uri": [str(video)]})
    return DecodeStage(options).decode_all(rows)


def batches_of(row: pa.Table, size: int) -> list[pa.Table]:
    """DISTINCT batches of `size` copies of `row`, each batch's clips in memory of its own."""
    return [pa.concat_tables([row] * size).combine_chunks() for _ in range(DISTINCT)]


def stage_for(checkpoint: Path, device: str, batch: int) -> InferenceStage:
    sha256 = load_pretrained(str(checkpoint)).checkpoint.weights_sha256
    options = InferenceStageOptions(
        str(checkpoint),
        None,
        sha256,
        PROCESSOR,
        "benchmark",
        precision="bf16" if device == "cuda" else "fp32",
        clips_per_forward=batch,
        device=device,
        torch_threads=1 if device == "cpu" else None,
    )
    return InferenceStage(options)


def median_seconds(run, inputs: list, synchronise=lambda: None) -> float:
    times = []
    for index in range(WARM_UPS + REPEATS):
        item = inputs[index % len(inputs)]
        synchronise()
        started = time.perf_counter()
        run(item)
        synchronise()
        if index >= WARM_UPS:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_copy(batch: pa.Table) -> np.ndarray:
    """Each batch's clips copied once (into a buffer reused across calls)."""
    chunk = batch.column(CLIPS).chunk(0)
    data = np.frombuffer(chunk.buffers()[2], np.uint8)
    target = _COPY_TARGET.setdefault(len(data), np.empty_like(data))
    np.copyto(target, data)
    return target


_COPY_TARGET: dict[int, np.ndarray] = {}


def host_overhead(checkpoint: Path, row: pa.Table) -> list[dict]:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    figures = []
    for size in BATCHES:
        batches = batches_of(row, size)
        stage = stage_for(checkpoint, "cpu", size)
        config = stage.classifier.model.config
        stage.classifier.forward = NullForward(config.num_labels, config.hidden_size)
        stage_s = median_seconds(stage, batches)
        copy_s = median_seconds(one_copy, batches)
        figures.append(
            {
                "batch": size,
                "stage_ms_per_clip": stage_s / size * 1e3,
                "one_copy_ms_per_clip": copy_s / size * 1e3,
            }
        )
        print(f"  {figures[-1]}", flush=True)
    return figures


def on_gpu(checkpoint: Path, row: pa.Table) -> list[dict]:
    figures = [gpu_figures(checkpoint, batches_of(row, size)) for size in BATCHES]
    for f in figures:
        print(f"  {f}", flush=True)
    return figures


def gpu_figures(checkpoint: Path, batches: list[pa.Table]) -> dict:
    size = batches[0].num_rows
    stage = stage_for(checkpoint, "cuda", size)
    classifier = stage.classifier
    clips = torch.zeros((size, 32, 224, 224, 3), dtype=torch.uint8, device="cuda")

    def bare(_: object) -> None:
        with torch.inference_mode(), classifier._autocast():
            classifier.forward(clips)

    forward_s = median_seconds(bare, batches, torch.cuda.synchronize)
    alone_s = median_seconds(stage, batches)
    two_s = median_seconds(lambda _: two_at_once(stage, batches), [None]) / (2 * len(batches))
    return {
        "batch": size,
        "bare_forward_clips_per_second": size / forward_s,
        "stage_clips_per_second": size / alone_s,
        "stage_two_at_once_clips_per_second": size / two_s,
    }


def two_at_once(stage: InferenceStage, batches: list[pa.Table]) -> None:
    """Each batch labelled twice, by two threads at once (as a GPU actor's two calls)."""
    threads = [threading.Thread(target=lambda: [stage(b) for b in batches]) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def render(figures: dict) -> str:
    m = figures["machine"]
    lines = [
        "## Inference stage",
        "",
        f"`python -m benchmarks.inference_stage`, {m['date']}, {m['cpu']} ({m['cores']} cores), "
        f"load {m['load_before']} before, {m['load_after']} after; torch {figures['torch']}.",
        "",
        "The stage's host work per batch with a model that does nothing, on one core (torch "
        "threads 1): clips read from Arrow in place and copied once into the staging buffer, "
        "averaging and top-k, the output columns. Baseline in the same run: one memcpy of the "
        "batch's clips (4.8 MB a clip), the floor of any path to a device. Median of 20 batches.",
        "",
        "| batch | stage, ms per clip | one copy, ms per clip | stage / one copy |",
        "| --- | --- | --- | --- |",
    ]
    for f in figures["cpu"]:
        lines.append(
            f"| {f['batch']} | {f['stage_ms_per_clip']:.3f} | {f['one_copy_ms_per_clip']:.3f} "
            f"| {f['stage_ms_per_clip'] / f['one_copy_ms_per_clip']:.2f}x |"
        )
    lines += ["", BEFORE, ""]
    for f in figures.get("cuda", []):
        forward = f["bare_forward_clips_per_second"]
        alone, two = f["stage_clips_per_second"], f["stage_two_at_once_clips_per_second"]
        lines.append(
            f"- {figures['gpu']}, batch {f['batch']}, bf16: bare forward {forward:.1f} clips/s; "
            f"the stage {alone:.1f} one batch at a time ({alone / forward:.2f}x), {two:.1f} two "
            f"at a time ({two / forward:.2f}x)."
        )
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures there")
    parser.add_argument("--render", metavar="PATH", help="only render a --json file's figures")
    args = parser.parse_args()
    if args.render:
        write_section("Inference stage", render(json.loads(Path(args.render).read_text())))
        return
    load_before = load_average()
    figures: dict = {"torch": torch.__version__}
    if args.json and Path(args.json).exists():
        figures = json.loads(Path(args.json).read_text())  # --device cuda adds to a cpu run's
    with tempfile.TemporaryDirectory(prefix="vivit-stage-") as temporary:
        scratch = Path(temporary)
        layers = BASE["num_hidden_layers"] if args.device == "cuda" else 1
        make_checkpoint(scratch / "checkpoint", **{**BASE, "num_hidden_layers": layers})
        row = decoded_row(scratch)
        if args.device == "cpu":
            figures["cpu"] = host_overhead(scratch / "checkpoint", row)
            figures["machine"] = machine(load_before)
        else:
            figures["cuda"] = on_gpu(scratch / "checkpoint", row)
            figures["gpu"] = torch.cuda.get_device_name(0)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(render(figures))


if __name__ == "__main__":
    main()
