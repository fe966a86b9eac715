"""The decode stage: manifest rows -> rows with uint8 clips (as bytes) and video metadata, or
error rows (segments mode: a row per segment). Plain Python over pyarrow tables, run by the
decode actors. A bad video is a row with `status = "error"`, never an exception: an exception
would make Ray Data drop or retry a whole batch. An unexpected exception of one video is its
`internal_error` row (`failures`); a source that did not answer the version check in time
(`source_versions`) is a `timeout` row, not decoded.

Nothing here imports torch: with `decode.isolation=process` the decode actor only passes
requests to its decoding processes, which have their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.errors import ConfigError
from vivit_batch.output.schema import (
    BYTES_READ,
    CLIP_SHAPE,
    CLIPS,
    DECODE_SECONDS,
    DECODED_COLUMNS,
    DECODED_ON_NVDEC,
    METADATA_COLUMNS,
    SEGMENT_DECODED_COLUMNS,
    SEGMENT_SPAN_COLUMNS,
    SEGMENTS_TOTAL,
    STAT_TIMED_OUT,
    VIEWS,
)
from vivit_batch.processor import ProcessorConfig
from vivit_batch.redact import redacted_uris
from vivit_batch.stages.failures import ALWAYS_FATAL, error_columns, internal_error
from vivit_batch.video import DecodeRequest, ErrorCode, VideoError, VideoMetadata
from vivit_batch.video.isolation import DecoderUnavailable, IsolatedDecoder
from vivit_batch.video.nvdec import decode_on_device, nvdec_unavailable
from vivit_batch.video.segments import SegmentChunk, decode_segments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeStageOptions:
    """What every video of a run is decoded with: a `DecodeRequest` less the video."""

    sampling: SamplingConfig
    processor: ProcessorConfig
    config: DecodeConfig = DecodeConfig()  # noqa: RUF009 (frozen: sharing it is safe)
    storage_options: dict | None = None

    def request(self, uri: str, video_id: str) -> DecodeRequest:
        return DecodeRequest(
            uri, self.sampling, self.processor, video_id, self.config, self.storage_options
        )


class DecodeStage:
    """Manifest rows -> a row per video with its clips, or in segments mode a row per segment,
    handed on a chunk of segments at a time (see `video.segments`). Decodes on the device
    `decoding_device` picks for this process."""

    def __init__(self, options: DecodeStageOptions):
        # A refusal is raised from the first batch, as the inference stage's: Ray reports an
        # error in an actor's constructor as text only, and retries the constructor without end.
        self.refusal: ConfigError | None = None
        self.options, self.decoder = options, None
        try:
            device = decoding_device(options.config.device)
        except ConfigError as error:
            self.refusal = error
            return
        self.options = options = replace(options, config=replace(options.config, device=device))
        if options.config.isolation == "process":
            self.decoder = IsolatedDecoder(options.config)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        if self.refusal:
            raise self.refusal
        stalled = (
            batch.column(STAT_TIMED_OUT).to_pylist()
            if STAT_TIMED_OUT in batch.column_names
            else [False] * batch.num_rows
        )
        videos = zip(
            batch.column("uri").to_pylist(),
            batch.column("video_id").to_pylist(),
            stalled,
            strict=True,
        )
        if not self.options.sampling.segments:
            rows = [self.decode_one(*video) for video in videos]
            yield _with_decoded(batch, rows, DECODED_COLUMNS)
            return
        for index, video in enumerate(videos):
            for rows in self.decode_segments(*video):
                yield _with_decoded(batch.take([index] * len(rows)), rows, SEGMENT_ROW_COLUMNS)

    def decode_all(self, batch: pa.Table) -> pa.Table:
        """Every row at once (`validate`, benchmarks): all of a video's segments in memory."""
        return pa.concat_tables(self(batch))

    def decode_one(self, uri: str, video_id: str, stalled: bool = False) -> dict:
        """A video's row; `stalled`: its source did not answer the version check in time."""
        started = time.perf_counter()
        row = dict.fromkeys(DECODED_COLUMNS)
        decode = self.decoder.decode if self.decoder else decode_on_device
        try:
            if stalled:
                raise self.stalled_version_check(uri)
            video = decode(self.options.request(uri, video_id))
            meta = video.metadata
            row.update({name: getattr(meta, name) for name in METADATA_COLUMNS})
            row.update(_clip_columns(video.clips))
            row[BYTES_READ] = meta.bytes_read
            row[DECODED_ON_NVDEC] = meta.decoder == "nvdec"
        except VideoError as error:
            row.update(error_columns(error))
        except FATAL:
            raise
        except Exception as error:  # noqa: BLE001 (one video's bug: its row, see `failures`)
            row = dict.fromkeys(DECODED_COLUMNS)
            row.update(error_columns(internal_error(uri, error, "decoding")))
        row[DECODE_SECONDS] = time.perf_counter() - started
        return row

    def decode_segments(
        self, uri: str, video_id: str, stalled: bool = False
    ) -> Iterator[list[dict]]:
        """A video's segment rows, a chunk at a time; an error ends them with one error row
        that says how many segment rows came before it (`SEGMENTS_TOTAL`)."""
        decode = self.decoder.decode_segments if self.decoder else decode_segments
        delivered = 0
        started = time.perf_counter()
        try:
            if stalled:
                raise self.stalled_version_check(uri)
            for chunk in decode(self.options.request(uri, video_id)):
                rows = _segment_rows(chunk)
                per_segment_s = (time.perf_counter() - started) / len(rows)
                for row in rows:
                    row[DECODE_SECONDS] = per_segment_s
                if chunk.metadata:
                    _finish_segments(rows, chunk.metadata, chunk.first_index + len(rows))
                delivered += len(rows)
                yield rows
                started = time.perf_counter()  # not the time spent waiting for inference
        except FATAL:
            raise
        except Exception as error:  # noqa: BLE001 (one video's bug: its row, see `failures`)
            if not isinstance(error, VideoError):
                error = internal_error(uri, error, "decoding")
            row = dict.fromkeys(SEGMENT_ROW_COLUMNS)
            row.update(error_columns(error))
            row.update({SEGMENTS_TOTAL: delivered, DECODE_SECONDS: time.perf_counter() - started})
            yield [row]

    def stalled_version_check(self, uri: str) -> VideoError:
        stall_s = self.options.config.stall_timeout_s
        return VideoError(
            ErrorCode.TIMEOUT,
            uri,
            f"the source did not answer the check of its version (size, time, ETag) within "
            f"decode.stall_timeout_s={stall_s:g} s, so it was not decoded; raise "
            "decode.stall_timeout_s for sources this slow",
        )


def decoding_device(setting: str) -> str:
    """`cpu` or `cuda` for `decode.device=setting` in this process: `auto` decodes on NVDEC
    where Ray gave the process a share of a GPU (the plan's GPU decoders) and PyNvVideoCodec
    can be loaded, on the CPU elsewhere (saying why). `cuda` where it cannot: `ConfigError`."""
    if setting == "cpu" or (setting == "auto" and not _given_a_gpu()):
        return "cpu"
    unavailable = nvdec_unavailable()
    if unavailable is None:
        return "cuda"
    if setting == "cuda":
        raise ConfigError(f"decode.device=cuda, but {unavailable}; or set decode.device=cpu")
    log.warning("%s: this decode actor decodes on the CPU", unavailable)
    return "cpu"


def _given_a_gpu() -> bool:
    import ray  # a Ray actor has it imported already

    return ray.is_initialized() and bool(ray.get_gpu_ids())


SEGMENT_ROW_COLUMNS = {**SEGMENT_DECODED_COLUMNS, **DECODED_COLUMNS}
FATAL: tuple[type[Exception], ...] = (*ALWAYS_FATAL, DecoderUnavailable)
"""What stops the run rather than make one video's error row (see `failures`)."""


def _segment_rows(chunk: SegmentChunk) -> list[dict]:
    rows = []
    for offset, (clips, (start, end)) in enumerate(zip(chunk.clips, chunk.bounds_s, strict=True)):
        row = dict.fromkeys(SEGMENT_ROW_COLUMNS)
        row.update(_clip_columns(clips))
        row.update(
            segment_index=chunk.first_index + offset,
            segment_start_s=float(start),
            segment_end_s=float(end),
            clip_start_s=float(start),
            clip_end_s=float(end),
        )
        rows.append(row)
    return rows


def _finish_segments(rows: list[dict], metadata: VideoMetadata, total: int) -> None:
    """The last chunk's rows carry the video's metadata and its segment count."""
    video_columns = [n for n in METADATA_COLUMNS if n not in SEGMENT_SPAN_COLUMNS]
    for row in rows:
        row.update({n: getattr(metadata, n) for n in video_columns})
        row[SEGMENTS_TOTAL] = total
    rows[-1][BYTES_READ] = metadata.bytes_read


def _clip_columns(clips: np.ndarray) -> dict:
    return {"status": "ok", CLIPS: clips.tobytes(), CLIP_SHAPE: clips.shape, VIEWS: len(clips)}


def _with_decoded(batch: pa.Table, rows: list[dict], columns: dict[str, pa.DataType]) -> pa.Table:
    """`batch` (manifest rows) with the decoded `columns` of `rows` appended."""
    for name, kind in columns.items():
        batch = batch.append_column(name, pa.array([r[name] for r in rows], kind))
    return redacted_uris(batch)  # fetched: done
