"""Segments mode without Ray: a video cut into segments decoded in one pass, handed on in chunks
of bounded size (in-process and through the isolated worker alike), and the driver's gathering
of a video's labelled rows into one whole video."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.output.schema import SEGMENTS_TOTAL
from vivit_batch.output.sink import FileWriter
from vivit_batch.output.videos import WholeVideos
from vivit_batch.processor import ProcessorConfig
from vivit_batch.stages.decode import DecodeStage, DecodeStageOptions
from vivit_batch.testing.media import garble_packets, read_index, write_video
from vivit_batch.video import DecodeRequest, decode_video
from vivit_batch.video.isolation import IsolatedDecoder
from vivit_batch.video.segments import decode_segments

PROCESSOR = ProcessorConfig(shortest_edge=64, crop_height=64, crop_width=64)
SEGMENTS = SamplingConfig(num_frames=4, frame_sample_rate=2, temporal_views="segments")
"""segments of 8 frames by default"""


def request(path, per_chunk: int = 2, sampling: SamplingConfig = SEGMENTS) -> DecodeRequest:
    return DecodeRequest(
        str(path), sampling, PROCESSOR, config=DecodeConfig(segments_per_chunk=per_chunk)
    )


def frame_indices(clip: np.ndarray) -> list[int]:
    """The frame index drawn in each picture of a (T, H, W, 3) clip."""
    return [read_index(picture) for picture in clip]


def test_segments_cover_the_video_in_order_each_from_its_own_frames(tmp_path):
    video = write_video(tmp_path / "a.mp4", num_frames=37, fps=30)  # 4 x 8 frames, then 5
    chunks = list(decode_segments(request(video, per_chunk=2)))
    assert [len(c.clips) for c in chunks] == [2, 2, 1]  # the last chunk is never empty
    assert [c.first_index for c in chunks] == [0, 2, 4]
    assert [c.metadata is None for c in chunks] == [True, True, False]
    assert chunks[-1].metadata.num_frames == 37
    bounds = np.concatenate([c.bounds_s for c in chunks]) * 30
    np.testing.assert_allclose(bounds, [[0, 8], [8, 16], [16, 24], [24, 32], [32, 37]])
    clips = np.concatenate([c.clips for c in chunks])
    assert clips.shape == (5, 1, 4, 64, 64, 3)
    for segment, (start, end) in enumerate(bounds):
        wanted = start + np.arange(4) * (end - start) / 4  # spread over the segment
        got = frame_indices(clips[segment, 0])
        assert all(abs(g - w) <= 0.5 for g, w in zip(got, wanted, strict=True)), (segment, got)
    assert frame_indices(clips[0, 0]) == [0, 2, 4, 6]


def test_a_short_tail_joins_the_last_segment_and_a_short_video_is_one_segment(tmp_path):
    tail = write_video(tmp_path / "tail.mp4", num_frames=27, fps=30)  # 3 x 8, then 3 < 4
    [chunk] = list(decode_segments(request(tail, per_chunk=8)))
    np.testing.assert_allclose(chunk.bounds_s * 30, [[0, 8], [8, 16], [16, 27]])
    short = write_video(tmp_path / "short.mp4", num_frames=5, fps=30)
    [chunk] = list(decode_segments(request(short)))
    np.testing.assert_allclose(chunk.bounds_s * 30, [[0, 5]])
    assert frame_indices(chunk.clips[0, 0])[::3] == [0, 4]  # spread over all of it


def test_overlapping_segments_start_every_stride(tmp_path):
    video = write_video(tmp_path / "a.mp4", num_frames=40, fps=10)
    sampling = replace(SEGMENTS, segment_s=2.0, segment_stride_s=1.0)
    chunks = list(decode_segments(request(video, sampling=sampling)))
    bounds = np.concatenate([c.bounds_s for c in chunks])
    np.testing.assert_allclose(bounds, [[0, 2], [1, 3], [2, 4]])
    clips = np.concatenate([c.clips for c in chunks])
    assert frame_indices(clips[1, 0]) == [10, 15, 20, 25]


def test_full_segments_are_the_clips_per_video_sampling_takes_there(tmp_path):
    video = write_video(tmp_path / "a.mp4", num_frames=32, content="detailed")
    segments = np.concatenate([c.clips for c in decode_segments(request(video))])
    uniform = replace(SEGMENTS, temporal_views="uniform", num_temporal_views=4)
    views = decode_video(request(video, sampling=uniform)).clips  # starts 0, 8, 16, 24
    np.testing.assert_array_equal(segments[:, 0], views)


@pytest.fixture(scope="module")
def decoder():
    with IsolatedDecoder() as decoder:
        yield decoder


def test_the_isolated_worker_sends_the_same_chunks(tmp_path, decoder):
    video = write_video(tmp_path / "a.mp4", num_frames=37, content="detailed")
    here = list(decode_segments(request(video, per_chunk=2)))
    there = list(decoder.decode_segments(request(video, per_chunk=2)))
    again = list(decoder.decode_segments(request(video, per_chunk=2)))  # the worker reused
    for chunks in (there, again):
        assert [c.first_index for c in chunks] == [c.first_index for c in here]
        for mine, theirs in zip(here, chunks, strict=True):
            np.testing.assert_array_equal(mine.clips, theirs.clips)
            np.testing.assert_allclose(mine.bounds_s, theirs.bounds_s)
            assert mine.metadata == theirs.metadata


def labelled(video_id: str, indices: list[int | None], total: int | None, status: str = "ok"):
    rows = len(indices)
    return pa.table(
        {
            "video_id": [video_id] * rows,
            "segment_index": pa.array(indices, pa.int32()),
            "status": [status] * rows,
            SEGMENTS_TOTAL: pa.array([total] * rows, pa.int32()),
            "duration_s": pa.array([9.0 if total is not None else None] * rows, pa.float64()),
            "fps": pa.array([30.0 if total is not None else None] * rows, pa.float64()),
            "width": pa.array([64 if total is not None else None] * rows, pa.int32()),
            "height": pa.array([48 if total is not None else None] * rows, pa.int32()),
            "num_frames": pa.array([270 if total is not None else None] * rows, pa.int64()),
            "clip_start_s": pa.array([float(i or 0) for i in indices], pa.float64()),
            "clip_end_s": pa.array([float(i or 0) + 1 for i in indices], pa.float64()),
        }
    )


def test_a_video_leaves_whole_once_all_its_segments_are_in():
    videos = WholeVideos(max_held_bytes=2**30)
    last_chunk_first = pa.concat_tables([labelled("a", [2, 3], 4), labelled("b", [0, 1], None)])
    assert list(videos.add(last_chunk_first)) == []
    assert videos.incomplete == 2
    [a] = list(videos.add(pa.concat_tables([labelled("a", [1, 2, 0], None)])))  # 2 again
    assert a["segment_index"].to_pylist() == [0, 1, 2, 3]
    assert a["duration_s"].to_pylist() == [9.0] * 4  # the video's metadata on every segment
    assert a["clip_start_s"].to_pylist() == [0.0, 1.0, 2.0, 3.0]  # each segment's own span
    # b failed after its first two segments went out: its error row says so
    [b] = list(videos.add(labelled("b", [None], 2, status="error")))
    assert b.num_rows == 1 and b["status"].to_pylist() == ["error"]
    assert videos.incomplete == 0


def test_segments_that_inference_failed_make_one_error_row_without_a_segment():
    videos = WholeVideos(max_held_bytes=2**30)
    failed = pa.concat_tables([labelled("c", [0], None), labelled("c", [1, 2], 3, status="error")])
    [c] = list(videos.add(failed))
    assert c["status"].to_pylist() == ["error"] and c["segment_index"].to_pylist() == [None]


CAPTION = 10_000
"""bytes of a manifest value that every segment row of its video carries"""


def carrying(video_id: str, indices: list[int], total: int | None) -> pa.Table:
    """Labelled segment rows as the driver gets them, each with a manifest caption."""
    rows = labelled(video_id, indices, total)
    outcome = {"error_code": None, "error_message": None, "label": "cat"}
    for name, value in outcome.items():
        rows = rows.append_column(name, pa.array([value] * rows.num_rows, pa.string()))
    return rows.append_column("caption", pa.array(["c" * CAPTION] * rows.num_rows))


def test_whole_videos_leave_early_to_keep_the_rows_held_within_the_budget():
    budget = 10 * CAPTION  # about 10 segment rows
    videos = WholeVideos(max_held_bytes=budget)
    batches = [carrying(video, [0, 1, 2, 3], 4) for video in "abcde"]
    files = [f["video_id"].unique().to_pylist() for f in videos.files(batches, 1000, 3600)]
    assert files == [["a", "b", "c"], ["d", "e"]]  # 1000 rows a file, but 12 rows are too many
    unbounded = WholeVideos(max_held_bytes=2**40).files(batches, 1000, 3600)
    assert [f["video_id"].unique().to_pylist() for f in unbounded] == [list("abcde")]


def test_a_video_past_the_budget_becomes_one_too_large_row_and_the_others_go_on():
    budget = 10 * CAPTION
    videos = WholeVideos(max_held_bytes=budget)
    held = []

    def arriving():
        yield carrying("other", [0, 1], None)
        for first in range(0, 12, 3):  # "long" alone outgrows the budget on its 4th chunk
            yield carrying("long", [first, first + 1, first + 2], None)
            held.append(videos.held_bytes)
        yield carrying("other", [2], 3)
        yield carrying("long", [12], 13)  # its last chunk, after it was given up: dropped

    files = list(videos.files(arriving(), rows_per_file=1000, commit_every_s=3600))
    assert max(held) <= budget and videos.incomplete == 0
    [rows] = files
    [error] = rows.filter(pc.equal(rows["video_id"], "long")).to_pylist()
    assert (error["status"], error["error_code"]) == ("error", "too_large")
    assert (
        "for 2 unfinished video(s), more than output.max_held_bytes (100000)"
        in (error["error_message"])
    )
    assert "raise output.max_held_bytes" in error["error_message"]
    assert (error["segment_index"], error["label"], error["duration_s"]) == (None, None, None)
    assert error["caption"] == "c" * CAPTION  # the manifest's values stay on its row
    other = rows.filter(pc.equal(rows["video_id"], "other"))
    assert other["segment_index"].to_pylist() == [0, 1, 2]
    assert other["status"].unique().to_pylist() == ["ok"]


def test_a_video_still_unfinished_at_the_end_fails_the_run():
    videos = WholeVideos(max_held_bytes=2**30)
    with pytest.raises(RuntimeError, match="segment rows of 1 videos did not all arrive"):
        list(videos.files([carrying("a", [0, 1], 4), carrying("b", [0], 1)], 1000, 3600))


@pytest.mark.parametrize(
    ("ids", "slices"),
    [
        (list("abcdefg"), [(0, 3), (3, 3), (6, 1)]),
        (list("aabbbbcdd"), [(0, 2), (2, 4), (6, 3)]),  # b, longer than a file, alone
    ],
)
def test_files_hold_whole_videos(ids, slices):
    assert FileWriter(None, "run", pa.schema([]), rows_per_file=3).file_slices(ids) == slices


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_a_video_that_fails_midway_is_one_error_row_and_none_of_its_segments(
    tmp_path, isolation, decoder
):
    video = write_video(tmp_path / "a.avi", num_frames=60, codec="mjpeg", pix_fmt="yuvj420p")
    garble_packets(video, every=1, start=20)  # frames 20 on damaged: too many to label
    stage = DecodeStage(
        DecodeStageOptions(
            SEGMENTS, PROCESSOR, DecodeConfig(segments_per_chunk=1, isolation="none")
        )
    )
    stage.decoder = decoder if isolation == "process" else None
    tables = list(stage(pa.table({"video_id": ["a"], "uri": [str(video)]})))
    *chunks, failed = tables
    assert len(chunks) >= 2  # segments went on to inference before the damage was found
    assert failed["status"].to_pylist() == ["error"]
    assert failed["error_code"].to_pylist() == ["decode_error"]
    assert failed[SEGMENTS_TOTAL].to_pylist() == [sum(t.num_rows for t in chunks)]
    videos = WholeVideos(max_held_bytes=2**30)
    whole = [rows for table in tables for rows in videos.add(table)]
    assert len(whole) == 1 and whole[0].num_rows == 1 and whole[0]["status"][0].as_py() == "error"
