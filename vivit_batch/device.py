"""Where inference really runs: each inference actor checks the device it was planned with
before it labels anything, and describes what it uses, for the run report.

A GPU plan that torch cannot carry out (a CPU-only torch build on a GPU node, a CUDA device
count other than what Ray assigned, a model that does not fit the GPU's memory at the planned
clips per forward pass) is a `DeviceError`: the run stops with exit code 2, nothing labelled.
A CPU plan runs on the CPU with the planned torch threads, also on a node that has GPUs. bf16
and fp16 are autocast on CUDA only: asked for on a CPU, the actor labels in fp32 and says so in
the log and in the run report (a config shared by GPU and CPU clusters keeps working).
"""

from __future__ import annotations

import logging
import os
import platform

import torch

from vivit_batch.device_record import CPU, CUDA
from vivit_batch.errors import DeviceError

log = logging.getLogger("vivit_batch")


def torch_build() -> str:
    return f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU-only build'})"


def assigned_gpus() -> list[str]:
    """The GPU ids Ray assigned to this process; none outside Ray."""
    import ray

    return [str(gpu) for gpu in ray.get_gpu_ids()] if ray.is_initialized() else []


def open_device(planned: str, threads: int | None) -> torch.device:
    """The device to label on: `planned` ("cuda" or "cpu"), checked against this process's."""
    if planned == CPU:
        if threads:
            torch.set_num_threads(threads)
        return torch.device(CPU)
    fix = "or label on the CPU with --set resources.inference_gpus=0"
    where = f"inference on node {platform.node()} was planned with a GPU"
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{where}, but {torch_build()} cannot use CUDA there. Install a CUDA build of torch "
            f"on the GPU nodes (https://pytorch.org/get-started/locally/), {fix}"
        )
    assigned, visible = assigned_gpus(), torch.cuda.device_count()
    if assigned and visible != len(assigned):
        raise DeviceError(
            f"{where}: Ray assigned GPU(s) {', '.join(assigned)} but {torch_build()} sees "
            f"{visible} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Let "
            "Ray set CUDA_VISIBLE_DEVICES (unset RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES), "
            + fix
        )
    return torch.device(CUDA, 0)


def precision_on(device: torch.device, requested: str) -> str:
    """The precision `device` runs: `requested` on CUDA, fp32 on the CPU."""
    return requested if device.type == CUDA else "fp32"


def require_fit(
    forward, device: torch.device, clips_per_forward: int, precision: str, batches: int = 1
) -> None:
    """Run `forward()` (one full-size forward pass of `batches` x `clips_per_forward` clips:
    what an actor that labels `batches` at once needs) once; on CUDA, a `DeviceError` if it
    runs out of memory."""
    try:
        forward()
    except torch.cuda.OutOfMemoryError as error:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        torch.cuda.empty_cache()
        raise DeviceError(
            f"the model does not fit {torch.cuda.get_device_name(device)} ({total:.1f} GiB) "
            f"on node {platform.node()} at resources.clips_per_forward={clips_per_forward}"
            + (f" ({batches} batches labelled at once)" if batches > 1 else "")
            + ": "
            + ("lower it" if precision != "fp32" else "lower it, or use model.precision=bf16")
        ) from error


def describe(device: torch.device, requested_precision: str) -> dict:
    """What an inference actor labels with, for the run report."""
    used = precision_on(device, requested_precision)
    record = {
        "node": platform.node(),
        "pid": os.getpid(),
        "device": str(device),
        "name": _cpu_name(),
        "memory_gib": None,
        "threads": torch.get_num_threads(),
        "precision": used,
        "requested_precision": requested_precision,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus_assigned": assigned_gpus(),
    }
    if device.type == CUDA:
        properties = torch.cuda.get_device_properties(device)
        record.update(name=properties.name, memory_gib=round(properties.total_memory / 2**30, 1))
    if used != requested_precision:
        record["warning"] = (
            f"model.precision={requested_precision} is autocast on CUDA only: the actor on "
            f"{record['node']} labelled on the CPU in {used}"
        )
    return record


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"
