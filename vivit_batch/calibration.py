"""What each stage costs per clip, for this model, input and machine: the figures the CPU plan
divides the cores by (`job.resources`).

`Calibration` measures them while Ray starts. It decodes the manifest's first videos
(`ManifestSummary.first_uris`) as the decode stage does, stopping once `DECODE_BUDGET_S` of CPU is
spent, and a process of its own (`python -m vivit_batch.calibration`) times the model's forward
pass on clips of their shape, on one thread: the model with one encoder layer through the
inference code, then that layer alone, so that a 12-layer model costs about two layers to time
(`forward_seconds`). Weights do not change the cost: the layers are random.

Video bytes are untrusted. With `decode.isolation=process` (the default) they are decoded as the
decode stage decodes them: in an `IsolatedDecoder`'s sandboxed worker, which opens nothing and
holds no credentials, its reads served from a thread of the process that starts the measurement
(as the decode actor serves them). The measuring process gets the decoding processes'
environment (no `AWS_*`, no `HOME`) and nothing of the videos but, when no centre crop fixes the
clips' shape, the first decoded clips; else it times the forward on blank clips of that shape
while the videos decode (the forward's cost does not depend on the pixels). A video's decode
cost is the worker's CPU seconds on it (as it reports them) plus the serving thread's (its reads
of local files, the clips received; reads of remote sources run on threads of their own, not
counted). The first video includes a worker's one-time costs, about 10 ms, much as the stage's
own per-video work that is not decoding comes on top of every video's. A video that crashes or
hangs a worker costs that video, as in the run.

With `decode.isolation=none` (where the run decodes in its actors, unsandboxed, too) the
measuring process decodes the videos itself, timed by its own CPU seconds, with what reading
sources needs of the environment (`AWS_*`, `HOME`, proxies), the decoding memory cap and no core
files. A video that crashes or hangs it costs the measurement, never the run.

Either way the measurement has a deadline (`TIMEOUT_S`); when it fails the plan splits the cores
evenly, and says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np

from vivit_batch.model.config import VivitConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.stages.decode import DecodeStageOptions
from vivit_batch.video.isolation import (
    IsolatedDecoder,
    decoder_environment,
    source_reader_environment,
)

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


@dataclass(frozen=True)
class _Request:
    """What the measuring process is sent first."""

    decode: DecodeStageOptions
    model: dict
    uris: list[str] | None
    """the videos to decode, or None: decoded elsewhere"""
    clips_per_forward: int
    sample_follows: bool
    """the decoded clips (or None) follow, to time the forward on"""


class Calibration:
    """A measurement running in its own process (and, with isolated decoding, a thread serving
    the decoding workers); `costs()` waits for its figures."""

    def __init__(
        self,
        decode: DecodeStageOptions,
        model: VivitConfig,
        uris: list[str],
        clips_per_forward: int,
    ):
        self.started = time.monotonic()
        isolated = decode.config.isolation == "process"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vivit_batch.calibration"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=decoder_environment() if isolated else source_reader_environment(),
        )
        stream = self.process.stdin
        assert stream is not None
        self.process.stdin = None  # ours to write and close: `communicate` is not to touch it
        # A centre crop fixes the clips' shape: the forward, whose cost does not depend on the
        # pixels, is timed on blank clips meanwhile, not after the decoding
        sample_follows = isolated and not decode.processor.do_center_crop
        model_fields = dataclasses.asdict(model)
        request = _Request(
            decode, model_fields, None if isolated else uris, clips_per_forward, sample_follows
        )
        _send(stream, request, last=not sample_follows)
        self.decoding: _IsolatedDecoding | None = None
        if isolated:
            end = self.started + TIMEOUT_S
            sample_to = stream if sample_follows else None
            self.decoding = _IsolatedDecoding(decode, uris, end, sample_to)
            self.decoding.start()
        self.failure: str | None = None
        self._costs: StageCosts | None = None

    def costs(self) -> StageCosts | None:
        """The figures (waiting for them), or None when the measurement failed: `failure`
        says why."""
        if self.process.returncode is None:
            self._collect()
        return self._costs

    def _collect(self) -> None:
        if self.decoding:
            self.decoding.join(timeout=max(self._remaining(), 0.1))
            if self.decoding.is_alive():
                self._past_deadline()
                return
        try:
            reply, errors = self.process.communicate(timeout=max(self._remaining(), 0.1))
        except subprocess.TimeoutExpired:
            self._past_deadline()
            return
        if self.process.returncode != 0:
            self.failure = (
                f"the measuring process ended with status {self.process.returncode}: "
                + errors.decode(errors="replace").strip()[-300:]
            )
            return
        if self.decoding and self.decoding.failure:
            self.failure = self.decoding.failure
            return
        try:
            figures = _parse(reply)
            if self.decoding:
                figures.update(self.decoding.figures.summary())
            self._costs = StageCosts(**figures, seconds=round(time.monotonic() - self.started, 3))
        except (ValueError, KeyError, TypeError) as error:
            self.failure = f"the measuring process replied {reply[:100]!r} ({error})"

    def _remaining(self) -> float:
        return TIMEOUT_S - (time.monotonic() - self.started)

    def _past_deadline(self) -> None:
        self.cancel()
        self.failure = f"the measurement took more than {TIMEOUT_S:g} s"

    def record(self) -> dict:
        """What the run report keeps: the figures, or why there are none."""
        costs = self.costs()
        return {**(costs.to_dict() if costs else {}), "failure": self.failure}

    def cancel(self) -> None:
        """Stop the measurement (its figures are not needed). Decoding stops after the video
        under way (its deadline is the measurement's at the latest)."""
        if self.decoding:
            self.decoding.stop.set()
        if self.process.returncode is None:
            self.process.kill()
            self.process.communicate()
            self.failure = self.failure or "cancelled"


def _parse(reply: bytes) -> dict:
    """The child's JSON, checked (it handled untrusted bytes: believe numbers only)."""
    values = json.loads(reply)
    figures: dict[str, object] = {"inference_s": _positive(values["inference_s"])}
    if "decode_s" in values:
        decode_s = values["decode_s"]
        figures |= {
            "decode_s": None if decode_s is None else _positive(decode_s),
            "videos": int(values["videos"]),
            "clips": int(values["clips"]),
        }
    return figures


def _positive(value: object) -> float:
    if not isinstance(value, float | int) or not 0 < value < 1e6:
        raise ValueError(f"not a cost: {value!r}")
    return float(value)


def _send(stream: IO[bytes], message: object, *, last: bool) -> None:
    """Pickle `message` to the measuring process, and close its input after the `last`. It may
    have ended already: `costs` says how."""
    with contextlib.suppress(BrokenPipeError):
        stream.write(pickle.dumps(message))
        stream.flush()
    if last:
        with contextlib.suppress(BrokenPipeError):
            stream.close()


class _IsolatedDecoding(threading.Thread):
    """Decodes the videos in an `IsolatedDecoder` (this thread serves its reads), then sends
    the measuring process the first clips (or None) and closes its input, if `sample_to`."""

    def __init__(
        self,
        decode: DecodeStageOptions,
        uris: list[str],
        end: float,
        sample_to: IO[bytes] | None,
    ):
        super().__init__(name="calibration-decoding", daemon=True)
        self.options, self.uris, self.end, self.sample_to = decode, uris, end, sample_to
        self.stop = threading.Event()
        self.figures = DecodeFigures()
        self.failure: str | None = None

    def run(self) -> None:
        try:
            with IsolatedDecoder(
                self.options.config, startup_timeout_s=max(self.end - time.monotonic(), 0.1)
            ) as decoder:
                self.figures = decode_costs(
                    self.options, self.uris, self.end, decoder, self.stop.is_set
                )
        except Exception as error:  # noqa: BLE001 (the measurement's failure, not the run's)
            self.failure = f"the decoding processes failed: {error}"
        finally:
            if self.sample_to:
                _send(self.sample_to, self.figures.sample, last=True)


# ---------------------------------------------------------------------- decoding and timing


@dataclass
class DecodeFigures:
    """What decoding the first videos cost."""

    cpu_s: float = 0.0
    clips: int = 0
    videos: int = 0
    sample: np.ndarray | None = None
    """the first video's clips"""

    def summary(self) -> dict:
        return {
            "decode_s": self.cpu_s / self.clips if self.clips else None,
            "videos": self.videos,
            "clips": self.clips,
        }


def decode_costs(
    decode: DecodeStageOptions,
    uris: list[str],
    end: float,
    decoder: IsolatedDecoder | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> DecodeFigures:
    """Decode CPU seconds over the first `uris` that decode, until `DECODE_BUDGET_S` is spent,
    `end` (monotonic seconds, each video's deadline too) passes or `stopped()`: in `decoder`'s
    worker (plus this thread's serving), else in this process."""
    figures = DecodeFigures()
    for uri in uris:
        if stopped() or time.monotonic() >= end:
            break
        clock = time.thread_time if decoder else time.process_time
        started = clock()
        decoded = first_clips(_due_by(decode, end), uri, decoder)
        if decoded is None:
            continue
        figures.cpu_s += clock() - started + (decoder.worker_cpu_s if decoder else 0.0)
        figures.clips, figures.videos = figures.clips + len(decoded), figures.videos + 1
        figures.sample = decoded if figures.sample is None else figures.sample
        if figures.cpu_s > DECODE_BUDGET_S:
            break
    return figures


def _due_by(decode: DecodeStageOptions, end: float) -> DecodeStageOptions:
    """`decode` with its timeout cut to what is left before `end`."""
    left = max(end - time.monotonic(), 0.1)
    timeout_s = decode.config.timeout_s
    config = dataclasses.replace(decode.config, timeout_s=min(timeout_s or left, left))
    return dataclasses.replace(decode, config=config)


def first_clips(
    decode: DecodeStageOptions, uri: str, decoder: IsolatedDecoder | None = None
) -> np.ndarray | None:
    """A video's clips (N, T, H, W, 3) as the decode stage makes them (in segments mode, its
    first chunk's), in `decoder` or this process; None for a video that does not decode."""
    from vivit_batch.video import VideoError, decode_video
    from vivit_batch.video.segments import decode_segments

    request = decode.request(uri, video_id="calibration")
    try:
        if decode.sampling.segments:
            chunks = decoder.decode_segments(request) if decoder else decode_segments(request)
            return np.concatenate(next(iter(chunks)).clips)
        return (decoder.decode(request) if decoder else decode_video(request)).clips
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
    request: _Request = pickle.load(sys.stdin.buffer)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    decode, model = request.decode, VivitConfig(**request.model)
    figures: dict[str, object] = {}
    sample = None
    if request.sample_follows:  # decoded in sandboxed workers, not centre-cropped
        sample = pickle.load(sys.stdin.buffer)
    elif request.uris is not None:  # decode.isolation=none: decoded here, under the cap
        cap = decode.config.max_memory_bytes
        if cap:
            hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
            resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        decoded = decode_costs(decode, request.uris, end=float("inf"))
        sample, figures = decoded.sample, decoded.summary()
    if sample is None:  # blank clips, of a centre crop's shape
        size = decode.processor.crop_height, decode.processor.crop_width
        sample = np.zeros((1, decode.sampling.num_frames or model.num_frames, *size, 3), np.uint8)
    inference_s = forward_seconds(model, decode.processor, sample, request.clips_per_forward)
    sys.stdout.write(json.dumps({**figures, "inference_s": inference_s}))
    sys.stdout.flush()
    os._exit(0)  # torch's teardown takes longer than the measurement


if __name__ == "__main__":
    main()
