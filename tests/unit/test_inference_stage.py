"""The inference stage's way from Arrow to the model: clips read in place from the decoded
batch, copied once into reused staging buffers, several batches labelled at once by one stage
(a GPU actor runs two), and the stage's busy time counted once where its calls overlap. Real
decoding of encoded videos and a real tiny checkpoint, without Ray."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.inference import ClipStaging
from vivit_batch.model import load_pretrained
from vivit_batch.output.schema import CLIPS, INFERENCE_SECONDS, PREDICTION_COLUMNS
from vivit_batch.processor import ProcessorConfig
from vivit_batch.stages.decode import DecodeStage, DecodeStageOptions
from vivit_batch.stages.inference import (
    InferenceStage,
    InferenceStageOptions,
    _BusyTime,
    _ClipColumn,
)
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video

PROCESSOR = ProcessorConfig(shortest_edge=32, crop_height=32, crop_width=32)
COMPARED = [*PREDICTION_COLUMNS, "embedding", "status", "error_code", "video_id"]
"""Columns that do not depend on when or how long a batch was labelled."""


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> pa.Table:
    """Seven decoded rows: six videos of three views each, one missing file."""
    directory = tmp_path_factory.mktemp("videos")
    uris = [str(write_video(directory / f"v{i}.mp4", num_frames=12 + 4 * i)) for i in range(6)]
    uris.insert(3, str(directory / "missing.mp4"))
    options = DecodeStageOptions(
        SamplingConfig(
            num_frames=4, frame_sample_rate=2, temporal_views="uniform", num_temporal_views=3
        ),
        PROCESSOR,
        DecodeConfig(isolation="none"),
    )
    rows = pa.table({"video_id": [f"v{i}" for i in range(len(uris))], "uri": uris})
    return DecodeStage(options).decode_all(rows)


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> InferenceStage:
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    make_checkpoint(checkpoint, num_labels=7)
    sha256 = load_pretrained(str(checkpoint)).checkpoint.weights_sha256
    options = InferenceStageOptions(str(checkpoint), None, sha256, PROCESSOR, "test", top_k=3)
    return InferenceStage(options)


def in_chunks(table: pa.Table, *sizes: int) -> pa.Table:
    """`table` as Arrow chunks of these row counts (as Ray Data hands over batches it made
    of several blocks)."""
    parts, start = [], 0
    for size in sizes:
        parts.append(table.slice(start, size))
        start += size
    return pa.concat_tables(parts)


def test_clips_are_read_in_place_from_every_arrow_chunk(decoded):
    batch = in_chunks(decoded, 2, 3, 2)
    assert batch.column(CLIPS).num_chunks == 3
    column = _ClipColumn(batch)
    for row in (0, 4, 6):
        chunk, index = locate(batch.column(CLIPS), row)
        clips = column[row]
        assert clips.tobytes() == chunk[index].as_py()
        data = chunk.buffers()[2]
        address = clips.__array_interface__["data"][0]
        assert data.address <= address < data.address + data.size  # a view, not a copy


def locate(column: pa.ChunkedArray, row: int) -> tuple[pa.Array, int]:
    for chunk in column.chunks:
        if row < len(chunk):
            return chunk, row
        row -= len(chunk)
    raise IndexError(row)


def test_clips_are_staged_in_two_buffers_used_in_turn():
    staging = ClipStaging(torch.device("cpu"))
    rng = np.random.default_rng(0)
    addresses = []
    for _ in range(4):
        pieces = [rng.integers(0, 256, (n, 4, 8, 8, 3), dtype=np.uint8) for n in (2, 1)]
        with staging.loaded(pieces) as clips:
            np.testing.assert_array_equal(clips.numpy(), np.concatenate(pieces))
            addresses.append(clips.data_ptr())
    assert addresses[0] == addresses[2] != addresses[1] == addresses[3]


def test_batches_labelled_at_once_stage_their_clips_apart(stage):
    """Three threads hold their staged clips at once (more than a staging's two slots)."""
    together = threading.Barrier(3)
    seen: dict[int, list[int]] = {}

    def hold(value: int) -> None:
        pieces = [np.full((2, 4, 32, 32, 3), value, np.uint8)]
        with stage.classifier.staging.loaded(pieces) as clips:
            together.wait()  # every thread has staged its clips
            together.wait()
            seen[value] = clips.unique().tolist()

    run_in_threads(hold, [1, 2, 3])
    assert seen == {1: [1], 2: [2], 3: [3]}


def run_in_threads(function, arguments: list) -> None:
    threads = [threading.Thread(target=function, args=(argument,)) for argument in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_batches_in_any_chunking_or_labelled_at_once_get_the_same_rows(decoded, stage):
    alone = stage(decoded).select(COMPARED)
    assert alone.column("status").to_pylist().count("ok") == 6
    assert alone.column("label").null_count == 1  # the missing file's error row
    assert stage(in_chunks(decoded, 1, 5, 2)).select(COMPARED).equals(alone)

    results: dict[int, pa.Table] = {}
    start = threading.Barrier(4)

    def label(key: int) -> None:
        start.wait()
        results[key] = stage(decoded).select(COMPARED)

    run_in_threads(label, list(range(4)))
    assert len(results) == 4 and all(table.equals(alone) for table in results.values())


def test_calls_that_overlap_count_their_common_time_once(decoded, stage):
    busy = _BusyTime()
    busy.started(10.0)
    busy.started(11.0)
    assert busy.ended(12.0) == 2.0  # the second call ended first: 10-12
    busy.started(12.5)
    assert busy.ended(13.0) == 1.0  # 12-13, one call or two
    assert busy.ended(14.0) == 1.0  # the first call: 13-14
    busy.started(20.0)  # idle from 14 to 20: not counted
    assert busy.ended(21.5) == 1.5
    seconds = stage(decoded).column(INFERENCE_SECONDS).to_numpy()
    assert (seconds > 0).all() and np.ptp(seconds) == 0  # the batch's share, each row alike
