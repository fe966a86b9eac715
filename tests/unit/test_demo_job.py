"""`vivit-batch demo`: the full job (Ray, Parquet) labels freshly generated held-out clips with
the shipped demo model, and gets them right; a head of its grouped motions, trained on some
videos' hand labels, relabels the output and gets the other videos right too."""

from __future__ import annotations

from vivit_batch.demo.run import timeline_summary


def test_timeline_summary_shows_each_video_s_segments_in_time_order():
    true_timeline = "moving right 0.0-4.0 s, moving left 4.0-8.0 s"

    def segment(index: int, start_s: float, end_s: float, label: str, score: float) -> dict:
        return {
            "video_id": "timeline_000",
            "status": "ok",
            "true_timeline": true_timeline,
            "segment_index": index,
            "segment_start_s": start_s,
            "segment_end_s": end_s,
            "label": label,
            "score": score,
        }

    broken = {
        "video_id": "broken",
        "status": "error",
        "segment_index": None,
        "error_code": "unreadable",
        "error_message": "not a media file",
    }
    rows = [
        segment(1, 4.0, 8.0, "moving left", 0.912),
        broken,
        segment(0, 0, 4, "moving right", 0.986),
    ]
    assert timeline_summary(rows) == (
        f"timeline of timeline_000 (true: {true_timeline}):\n"
        "  0.0-4.0 s  moving right   0.99\n"
        "  4.0-8.0 s  moving left    0.91\n"
        "error row: broken: unreadable: not a media file"
    )
