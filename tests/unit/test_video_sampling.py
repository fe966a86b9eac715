"""Frame positions and nearest-frame matching: pure functions, no video."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vivit_batch.config import SamplingConfig
from vivit_batch.errors import ConfigError
from vivit_batch.video.sampling import NearestFrameMatcher, frame_positions


def test_defaults_match_the_page_recipe_with_the_checkpoints_frames():
    sampling = SamplingConfig()
    assert (sampling.num_frames, sampling.frame_sample_rate) == (None, 4)  # the checkpoint's
    with pytest.raises(ConfigError, match="sampling.num_frames is not set"):
        sampling.span  # noqa: B018
    assert SamplingConfig(num_frames=32).span == 128 and sampling.num_views == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_frames", 0, "sampling.num_frames must be at least 1, got 0"),
        ("frame_sample_rate", 0, "sampling.frame_sample_rate must be at least 1"),
        ("temporal_views", "middle", "one of center, uniform, random, segments, got 'middle'"),
        ("num_temporal_views", 0, "sampling.num_temporal_views must be at least 1"),
        ("spatial_crops", "five", "sampling.spatial_crops must be one of center, three"),
    ],
)
def test_invalid_settings_name_the_key_and_allowed_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**{field: value})


def test_several_temporal_views_need_uniform():
    with pytest.raises(
        ConfigError, match="sampling.num_temporal_views=4 needs sampling.temporal_views=uniform"
    ):
        SamplingConfig(temporal_views="center", num_temporal_views=4)


def test_segment_lengths_need_segments():
    with pytest.raises(
        ConfigError, match="sampling.segment_stride_s needs sampling.temporal_views=segments"
    ):
        SamplingConfig(segment_stride_s=1.0)
    with pytest.raises(ConfigError, match="sampling.segment_s must be more than 0s"):
        SamplingConfig(temporal_views="segments", segment_s=0)


def test_center_clip_sits_in_the_middle():
    positions = frame_positions(100, SamplingConfig(num_frames=8, frame_sample_rate=4))
    # span 32 frames, 68 spare: 34 before, 34 after
    assert positions.tolist() == [[34, 38, 42, 46, 50, 54, 58, 62]]


def test_uniform_views_run_from_start_to_end():
    sampling = SamplingConfig(
        num_frames=4, frame_sample_rate=2, temporal_views="uniform", num_temporal_views=3
    )
    positions = frame_positions(28, sampling)  # span 8, starts at 0, 10, 20
    assert positions.tolist() == [[0, 2, 4, 6], [10, 12, 14, 16], [20, 22, 24, 26]]
    assert positions.max() == 26  # the last view ends at the last frame's stride slot


def test_single_uniform_view_is_the_center_clip():
    uniform = SamplingConfig(num_frames=32, temporal_views="uniform")
    center = SamplingConfig(num_frames=32)
    assert np.array_equal(frame_positions(500, uniform), frame_positions(500, center))


def test_random_view_is_reproducible_per_video_and_seed():
    sampling = SamplingConfig(num_frames=32, temporal_views="random", seed=7)
    first = frame_positions(1000, sampling, "video-a")
    assert np.array_equal(first, frame_positions(1000, sampling, "video-a"))
    starts = {int(frame_positions(1000, sampling, f"video-{i}")[0, 0]) for i in range(20)}
    assert len(starts) > 10  # different videos land in different places
    other_seed = SamplingConfig(num_frames=32, temporal_views="random", seed=8)
    assert not np.array_equal(first, frame_positions(1000, other_seed, "video-a"))


def test_random_view_stays_inside_the_video():
    sampling = SamplingConfig(num_frames=8, frame_sample_rate=4, temporal_views="random")
    for i in range(200):
        positions = frame_positions(40, sampling, str(i))
        assert positions.min() >= 0 and positions.max() <= 39
        assert np.all(np.diff(positions) == 4)


def test_short_video_is_sampled_over_its_whole_length_with_repeats():
    positions = frame_positions(10, SamplingConfig(num_frames=8, frame_sample_rate=4))
    assert positions.tolist() == [[0, 1, 2, 3, 5, 6, 7, 8]]
    positions = frame_positions(3, SamplingConfig(num_frames=6, frame_sample_rate=2))
    assert positions.tolist() == [[0, 0, 1, 1, 2, 2]]


def test_short_video_gives_every_uniform_view_the_same_frames():
    sampling = SamplingConfig(
        num_frames=4, frame_sample_rate=4, temporal_views="uniform", num_temporal_views=3
    )
    positions = frame_positions(1, sampling)
    assert positions.tolist() == [[0, 0, 0, 0]] * 3


@settings(deadline=None, max_examples=50)  # no deadline: a shared machine is slow at times
@given(
    total=st.integers(1, 5000),
    num_frames=st.integers(1, 64),
    stride=st.integers(1, 8),
    views=st.integers(1, 5),
)
def test_positions_are_in_range_and_ordered(total, num_frames, stride, views):
    sampling = SamplingConfig(
        num_frames=num_frames,
        frame_sample_rate=stride,
        temporal_views="uniform",
        num_temporal_views=views,
    )
    positions = frame_positions(total, sampling)
    assert positions.shape == (views, num_frames)
    assert positions.min() >= 0 and positions.max() < total
    assert np.all(np.diff(positions, axis=1) >= 0)
    assert np.all(np.diff(positions[:, 0]) >= 0)


def _matched(targets, times):
    matcher = NearestFrameMatcher(targets)
    chosen = {}
    for time in times:
        for item, indices in matcher.offer(time, time):
            chosen.update(dict.fromkeys(indices, item))
        if matcher.done:
            break
    for item, indices in matcher.finish():
        chosen.update(dict.fromkeys(indices, item))
    return [chosen[i] for i in range(len(targets))]


def test_matcher_picks_the_nearest_frame_and_the_earlier_on_a_tie():
    times = [0.0, 0.125, 0.375, 0.5, 1.0]  # binary fractions: the ties below are exact
    targets = [-0.5, 0.0, 0.0625, 0.2, 0.25, 0.75, 0.8, 2.0]
    assert _matched(targets, times) == [0.0, 0.0, 0.0, 0.125, 0.125, 0.5, 1.0, 1.0]


def test_matcher_stops_needing_frames_once_every_target_is_settled():
    matcher = NearestFrameMatcher([0.1, 0.2])
    matcher.offer(0.0, "a")
    matcher.offer(0.1, "b")
    assert not matcher.done and matcher.pending == [0.2]
    assert matcher.offer(0.2, "c") == [("c", [1])]
    assert matcher.done


def test_matcher_wants_sorted_targets():
    with pytest.raises(ValueError, match="sorted"):
        NearestFrameMatcher([0.2, 0.1])


@settings(deadline=None, max_examples=50)
@given(  # whole milliseconds, so distances compare exactly
    times=st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True).map(sorted),
    targets=st.lists(st.integers(-500, 10_500), min_size=1, max_size=40).map(sorted),
)
def test_matcher_agrees_with_brute_force(times, targets):
    expected = [min(times, key=lambda t, target=target: (abs(t - target), t)) for target in targets]
    assert _matched(targets, times) == expected
