"""One video never stops a run: a decoder reply cut short or oversized, an exception while
decoding, preprocessing or labelling one video, and a source that does not answer the version
check each cost that video one error row; the others are labelled, and the error rows count in
the error budget. Stage-level, without Ray: real decoding processes (faults injected through
`TEST_FAULTS`, the test build's hook), a real tiny checkpoint, a real silent HTTP server."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.helpers.http import SilentServer
from vivit_batch.cli import exit_code_of
from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.errors import EXIT_ERROR_BUDGET, EXIT_OK
from vivit_batch.model import load_pretrained
from vivit_batch.output.runs import ErrorBudget, RunReport
from vivit_batch.output.schema import (
    CLIP_SHAPE,
    CLIPS,
    SEGMENTS_TOTAL,
    STAT_TIMED_OUT,
    VERSION_COLUMNS,
)
from vivit_batch.output.sink import stats_of
from vivit_batch.processor import ProcessorConfig
from vivit_batch.source_versions import changed_ids, with_versions
from vivit_batch.stages.decode import DecodeStage, DecodeStageOptions
from vivit_batch.stages.inference import InferenceStage, InferenceStageOptions
from vivit_batch.storage import with_read_timeout
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.media import write_video
from vivit_batch.video.isolation import KILL_GRACE_S
from vivit_batch.video.worker import TEST_FAULTS

PROCESSOR = ProcessorConfig(shortest_edge=32, crop_height=32, crop_width=32)
SAMPLING = SamplingConfig(num_frames=4, frame_sample_rate=2)
SLACK_S = 20.0
"""Added to the decoder's time bounds: this machine is shared and often loaded."""
NAMES = ["fine-1", "raise", "partial", "again-raise", "oversized", "fine-2"]
FAULTS = "raise:raise.mp4,partial_reply:partial.mp4,oversized_reply:oversized.mp4"
"""`again-raise.mp4` ends with `raise.mp4` too: the same bug hit by a second video."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("videos")
    return {name: write_video(directory / f"{name}.mp4", num_frames=12) for name in NAMES}


@pytest.fixture(scope="module")
def inference(tmp_path_factory) -> InferenceStage:
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    make_checkpoint(checkpoint)
    sha256 = load_pretrained(str(checkpoint), None).checkpoint.weights_sha256
    return InferenceStage(InferenceStageOptions(str(checkpoint), None, sha256, PROCESSOR, "test"))


def manifest(uris: list[str]) -> pa.Table:
    return pa.table({"video_id": [f"v{i}" for i in range(len(uris))], "uri": uris})


def by_name(table: pa.Table, column: str) -> dict[str, object]:
    return {
        Path(uri).stem: value
        for uri, value in zip(table["uri"].to_pylist(), table[column].to_pylist(), strict=True)
    }


def exit_code(labelled: pa.Table, max_error_fraction: float) -> int:
    """The run's exit code for these rows, as `run_job` counts them (`stats_of`)."""
    errors = stats_of(labelled).status.get("error", 0)
    budget = ErrorBudget(labelled.num_rows, errors, 0, max_error_fraction)
    return exit_code_of(RunReport(run_id="test", error_budget=budget))


def test_decoder_faults_cost_one_row_each_and_the_others_are_labelled(
    videos, inference, monkeypatch, caplog
):
    monkeypatch.setenv(TEST_FAULTS, FAULTS)  # before the decoding processes start
    stage = DecodeStage(DecodeStageOptions(SAMPLING, PROCESSOR, DecodeConfig(timeout_s=2)))
    try:
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, "vivit_batch"):
            decoded = stage.decode_all(manifest([str(videos[name]) for name in NAMES]))
        elapsed = time.monotonic() - started
    finally:
        stage.decoder.close()
    assert by_name(decoded, "error_code") == {
        "fine-1": None,
        "raise": "internal_error",
        "partial": "timeout",  # the reply's deadline covers its last byte
        "again-raise": "internal_error",
        "oversized": "decode_crash",  # a reply that is not one: the worker counts as crashed
        "fine-2": None,
    }
    assert elapsed < 2 + KILL_GRACE_S + SLACK_S  # the partial reply waited out, once
    messages = by_name(decoded, "error_message")
    assert f"RuntimeError: a fault injected by {TEST_FAULTS}" in messages["raise"]
    assert "above 16777216" in messages["oversized"]
    logged = [r for r in caplog.records if "internal_error while decoding" in r.getMessage()]
    assert len(logged) == 1  # one traceback for the bug, not one per video
    assert "Traceback" in logged[0].getMessage() and "_replies" in logged[0].getMessage()

    labelled = inference(decoded)
    assert by_name(labelled, "status") == {
        name: "ok" if name.startswith("fine") else "error" for name in NAMES
    }
    assert all(by_name(labelled, "label")[name] for name in ("fine-1", "fine-2"))
    assert exit_code(labelled, max_error_fraction=0.5) == EXIT_ERROR_BUDGET  # 4 of 6
    assert exit_code(labelled, max_error_fraction=0.7) == EXIT_OK


def test_a_batch_that_fails_in_inference_is_halved_until_the_bad_videos_are_found(
    videos, inference
):
    fine = [str(videos[name]) for name in ("fine-1", "fine-2")] * 4
    batch = DecodeStage(
        DecodeStageOptions(SAMPLING, PROCESSOR, DecodeConfig(isolation="none"))
    ).decode_all(manifest(fine))
    clips, shapes = batch[CLIPS].to_pylist(), batch[CLIP_SHAPE].to_pylist()
    clips[5], shapes[5] = bytes(4 * 32 * 32 * 4), [1, 4, 32, 32, 4]  # RGBA: labelling raises
    shapes[2] = [1, 4, 32, 32, 9]  # more bytes than the row has: preprocessing raises
    bad = batch.set_column(
        batch.schema.get_field_index(CLIPS), CLIPS, pa.array(clips, pa.large_binary())
    )
    bad = bad.set_column(
        bad.schema.get_field_index(CLIP_SHAPE), CLIP_SHAPE, pa.array(shapes, pa.list_(pa.int32()))
    )
    labelled, clean = inference(bad), inference(batch)
    codes = labelled["error_code"].to_pylist()
    assert codes == [None, None, "internal_error", None, None, "internal_error", None, None]
    messages = labelled["error_message"].to_pylist()
    assert "while preprocessing it (ValueError" in messages[2]
    assert "while labelling it (RuntimeError" in messages[5]
    for row in (0, 1, 3, 4, 6, 7):  # labelled as in a batch without the bad rows
        assert labelled["label"][row] == clean["label"][row]
        np.testing.assert_allclose(
            labelled["topk_scores"][row].as_py(), clean["topk_scores"][row].as_py(), rtol=1e-4
        )
    assert labelled["label"][2].as_py() is None and labelled["label"][5].as_py() is None


@pytest.fixture()
def silent():
    server = SilentServer()
    yield server
    server.stop()


def test_a_source_that_stalls_the_version_check_is_a_timeout_row_within_the_stall_timeout(
    videos, silent
):
    stall_s = 2.0
    margin_s = 1.5  # fsspec alone waits out the stall twice (HEAD, then GET)
    options = with_read_timeout({"http_allow_hosts": ("127.0.0.1",)}, stall_s)
    rows = manifest([str(videos["fine-1"]), silent.url])
    started = time.monotonic()
    versioned = with_versions(rows, options)
    elapsed = time.monotonic() - started
    assert elapsed < stall_s + margin_s
    assert versioned[STAT_TIMED_OUT].to_pylist() == [False, True]
    assert versioned["source_size"].to_pylist()[0] == videos["fine-1"].stat().st_size

    config = DecodeConfig(isolation="none", stall_timeout_s=stall_s)
    started = time.monotonic()
    decoded = DecodeStage(DecodeStageOptions(SAMPLING, PROCESSOR, config, options)).decode_all(
        versioned
    )
    assert time.monotonic() - started < stall_s  # not decoded: no second wait
    assert decoded["status"].to_pylist() == ["ok", "error"]
    assert decoded["error_code"][1].as_py() == "timeout"
    assert "decode.stall_timeout_s=2 s" in decoded["error_message"][1].as_py()

    # --refresh-changed: whether it changed is unknown, so its committed row stays
    recorded = pa.Table.from_pylist(
        [{"video_id": "v1", **dict.fromkeys(VERSION_COLUMNS)}],
        pa.schema([("video_id", pa.string()), *VERSION_COLUMNS.items()]),
    )
    started = time.monotonic()
    assert changed_ids(rows, recorded, options).num_rows == 0
    assert time.monotonic() - started < stall_s + margin_s


def test_an_exception_while_decoding_segments_ends_the_video_with_one_error_row(
    videos, monkeypatch
):
    monkeypatch.setenv(TEST_FAULTS, FAULTS)
    segments = SamplingConfig(num_frames=4, frame_sample_rate=1, temporal_views="segments")
    stage = DecodeStage(DecodeStageOptions(segments, PROCESSOR, DecodeConfig()))
    try:
        rows = stage.decode_all(manifest([str(videos["fine-1"]), str(videos["raise"])]))
    finally:
        stage.decoder.close()
    fine, failed = (rows.filter(pa.compute.equal(rows["video_id"], v)) for v in ("v0", "v1"))
    assert fine.num_rows == 3 and set(fine["status"].to_pylist()) == {"ok"}  # 12 frames / 4
    assert failed["error_code"].to_pylist() == ["internal_error"]
    assert failed[SEGMENTS_TOTAL].to_pylist() == [0]  # no segment row came before it
