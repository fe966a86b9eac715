"""What each stage costs per clip, for this model, input and machine: the figures the CPU plan
divides the cores by (`job.resources`).

`Calibration` measures them in a process of its own (`python -m vivit_batch.calibration`), started
before Ray so that it runs while Ray starts. That process decodes the manifest's first videos
(`ManifestSummary.first_uris`) as the decode stage does, stopping once `DECODE_BUDGET_S` of CPU is
spent (the first includes a decoding process's one-time costs, about 20 ms, much as the stage's own
per-video work that is not decoding comes on top of every video's), and times the model's forward
pass on their clips, on one thread: the model with one encoder layer through the inference code,
then that layer alone, so that a 12-layer model costs about two layers to time (`forward_seconds`).
Weights do not change the cost: the layers are random.

Video bytes are untrusted, so the process is set up much as the decoding processes are
(`video.isolation`): their environment (but for what opening sources needs: it reads them
itself, unsandboxed), their memory cap, no core files, and a deadline. A
video that crashes or hangs it costs the measurement, never the run: the plan then splits the
cores evenly, and says why.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vivit_batch.model.config import VivitConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.stages.decode import DecodeStageOptions
from vivit_batch.video.isolation import source_reader_environment

DECODE_BUDGET_S = 1.0
"""Decoding stops at the first video that brings its CPU seconds past this."""
TIMEOUT_S = 60.0
"""Wall-clock deadline of the whole measurement, start-up included."""
SHORT_FORWARD_S = 0.05
"""A forward pass of one clip quicker than this is timed on a full `clips_per_forward` batch,
where per-call overheads no longer dominate it (as in the run)."""


@dataclass(frozen=True)
class StageCosts:
    """CPU seconds per clip on one core (one decoder thread, one torch thread)."""

    decode_s: float | None
    """None when none of the videos tried could be decoded"""
    inference_s: float
    videos: int
    """videos decoded for `decode_s`"""
    clips: int
    seconds: float
    """wall time of the measurement"""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Calibration:
    """A measurement running in its own process; `costs()` waits for its figures."""

    def __init__(
        self,
        decode: DecodeStageOptions,
        model: VivitConfig,
        uris: list[str],
        clips_per_forward: int,
    ):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vivit_batch.calibration"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=source_reader_environment(),
        )
        request = (decode, dataclasses.asdict(model), uris, clips_per_forward)
        with self.process.stdin as stream:  # type: ignore[union-attr]
            stream.write(pickle.dumps(request))
        self.process.stdin = None  # sent and closed: `communicate` is not to touch it
        self.failure: str | None = None
        self._costs: StageCosts | None = None

    def costs(self) -> StageCosts | None:
        """The figures (waiting for them), or None when the measurement failed: `failure`
        says why."""
        if self.process.returncode is None:
            self._collect()
        return self._costs

    def _collect(self) -> None:
        remaining = TIMEOUT_S - (time.monotonic() - self.started)
        try:
            reply, errors = self.process.communicate(timeout=max(remaining, 0.1))
        except subprocess.TimeoutExpired:
            self.cancel()
            self.failure = f"the measurement took more than {TIMEOUT_S:g} s"
            return
        if self.process.returncode != 0:
            self.failure = (
                f"the measuring process ended with status {self.process.returncode}: "
                + errors.decode(errors="replace").strip()[-300:]
            )
            return
        try:
            self._costs = _parse(reply, time.monotonic() - self.started)
        except (ValueError, KeyError, TypeError) as error:
            self.failure = f"the measuring process replied {reply[:100]!r} ({error})"

    def record(self) -> dict:
        """What the run report keeps: the figures, or why there are none."""
        costs = self.costs()
        return {**(costs.to_dict() if costs else {}), "failure": self.failure}

    def cancel(self) -> None:
        """Stop the measurement (its figures are not needed)."""
        if self.process.returncode is None:
            self.process.kill()
            self.process.communicate()
            self.failure = self.failure or "cancelled"


def _parse(reply: bytes, seconds: float) -> StageCosts:
    """The child's JSON, checked (it decoded untrusted bytes: believe numbers only)."""
    values = json.loads(reply)
    decode_s = values["decode_s"]
    if decode_s is not None:
        decode_s = _positive(decode_s)
    return StageCosts(
        decode_s=decode_s,
        inference_s=_positive(values["inference_s"]),
        videos=int(values["videos"]),
        clips=int(values["clips"]),
        seconds=round(seconds, 3),
    )


def _positive(value: object) -> float:
    if not isinstance(value, float | int) or not 0 < value < 1e6:
        raise ValueError(f"not a cost: {value!r}")
    return float(value)


# ---------------------------------------------------------------------- the measuring process


def measure(
    decode: DecodeStageOptions, model: VivitConfig, uris: list[str], clips_per_forward: int
) -> dict:
    """Decode CPU seconds per clip over the first `uris` that decode, and the forward's."""
    spent, clips, videos, sample = 0.0, 0, 0, None
    for uri in uris:
        started = time.process_time()
        decoded = first_clips(decode, uri)
        if decoded is None:
            continue
        spent += time.process_time() - started
        clips, videos = clips + len(decoded), videos + 1
        sample = decoded if sample is None else sample
        if spent > DECODE_BUDGET_S:
            break
    if sample is None:
        size = decode.processor.crop_height, decode.processor.crop_width
        sample = np.zeros((1, decode.sampling.num_frames or model.num_frames, *size, 3), np.uint8)
    return {
        "decode_s": spent / clips if clips else None,
        "inference_s": forward_seconds(model, decode.processor, sample, clips_per_forward),
        "videos": videos,
        "clips": clips,
    }


def first_clips(decode: DecodeStageOptions, uri: str) -> np.ndarray | None:
    """A video's clips (N, T, H, W, 3) as the decode stage makes them (in segments mode, its
    first chunk's); None for a video that does not decode."""
    from vivit_batch.video import VideoError, decode_video
    from vivit_batch.video.segments import decode_segments

    request = decode.request(uri, video_id="calibration")
    try:
        if decode.sampling.segments:
            chunk = next(iter(decode_segments(request)))
            return np.concatenate(chunk.clips)
        return decode_video(request).clips
    except (VideoError, StopIteration):
        return None


def forward_seconds(
    model: VivitConfig, processor: ProcessorConfig, clips: np.ndarray, clips_per_forward: int
) -> float:
    """CPU seconds per clip of the inference stage's forward pass on one thread: the model
    with one encoder layer through `VideoClassifier`, plus the other layers at the cost of
    that layer alone."""
    import torch

    from vivit_batch.inference import VideoClassifier
    from vivit_batch.model import VivitForVideoClassification

    torch.manual_seed(0)
    one_layer = VivitForVideoClassification(dataclasses.replace(model, num_hidden_layers=1))
    classifier = VideoClassifier(one_layer.eval(), processor, clips_per_forward=clips_per_forward)
    batch = clips[:1]
    whole = _cpu_seconds(lambda: classifier.classify([batch]))
    if whole < SHORT_FORWARD_S and clips_per_forward > 1:
        batch = np.resize(batch, (clips_per_forward, *batch.shape[1:]))
        whole = _cpu_seconds(lambda: classifier.classify([batch]))
    grid = np.array(batch.shape[1:4]) // np.array(model.tubelet_size)
    hidden = torch.randn(len(batch), 1 + int(grid.prod()), model.hidden_size)
    with torch.inference_mode():
        layer = _cpu_seconds(lambda: one_layer.vivit.encoder.layer[0](hidden))
    return (whole + (model.num_hidden_layers - 1) * layer) / len(batch)


def _cpu_seconds(call: Callable[[], object]) -> float:
    """CPU seconds of `call`'s second run (the first warms caches and allocators)."""
    call()
    started = time.process_time()
    call()
    return time.process_time() - started


def main() -> None:
    import torch  # the resize's and the model's: not on the first video's clock

    torch.set_num_threads(1)  # as the decoding processes; the forward is timed per thread
    decode, model, uris, clips_per_forward = pickle.load(sys.stdin.buffer)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cap = decode.config.max_memory_bytes
    if cap:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    figures = measure(decode, VivitConfig(**model), uris, clips_per_forward)
    sys.stdout.write(json.dumps(figures))
    sys.stdout.flush()
    os._exit(0)  # torch's teardown takes longer than the measurement


if __name__ == "__main__":
    main()
