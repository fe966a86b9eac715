"""decode_video on videos encoded here, whose frames carry their own index
(`vivit_batch/testing/media.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from vivit_batch.config import DecodeConfig, SamplingConfig
from vivit_batch.processor import ProcessorConfig
from vivit_batch.testing.media import has_encoder, read_index, write_video
from vivit_batch.video import DecodeRequest, decode_video
from vivit_batch.video.sampling import frame_positions
from vivit_batch.video.transform import FrameConverter

CHECKPOINT = ProcessorConfig(shortest_edge=224)  # google/vivit-b-16x2-kinetics400
SHORT = SamplingConfig(num_frames=8, frame_sample_rate=4)


def av1_encoder() -> str:
    return next(
        (c for c in ("libaom-av1", "libsvtav1", "librav1e") if has_encoder(c)), "libaom-av1"
    )


def indices(clip: np.ndarray) -> list[int]:
    return [read_index(frame) for frame in clip]


def encode(tmp_path: Path, name: str, **kwargs) -> Path:
    codec = kwargs.get("codec", "libx264")
    if not has_encoder(codec):
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    return write_video(tmp_path / name, **kwargs)


CODECS = [
    ("h264.mp4", {"codec": "libx264"}),
    ("h264.mov", {"codec": "libx264"}),
    ("h264.mkv", {"codec": "libx264"}),
    ("h264.ts", {"codec": "libx264"}),
    ("hevc.mkv", {"codec": "libx265"}),
    ("hevc.mp4", {"codec": "libx265"}),
    ("vp9.webm", {"codec": "libvpx-vp9"}),
    ("vp8.webm", {"codec": "libvpx"}),
    ("av1.webm", {"codec": av1_encoder()}),
    ("av1.mp4", {"codec": av1_encoder()}),
    ("mpeg4.avi", {"codec": "mpeg4"}),
    ("mpeg4.mp4", {"codec": "mpeg4"}),
    ("mjpeg.avi", {"codec": "mjpeg", "pix_fmt": "yuvj420p"}),
    ("mjpeg.mov", {"codec": "mjpeg", "pix_fmt": "yuvj422p"}),
    ("h264-10bit.mp4", {"codec": "libx264", "pix_fmt": "yuv420p10le"}),
]


@pytest.mark.parametrize(("name", "kwargs"), CODECS, ids=[name for name, _ in CODECS])
def test_codecs_and_containers_give_the_sampled_frames(tmp_path, name, kwargs):
    path = encode(tmp_path, name, num_frames=60, **kwargs)
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    assert video.clips.shape == (1, 8, 224, 224, 3) and video.clips.dtype == np.uint8
    # span 32 of 60 frames: the centre clip starts at frame 14
    assert indices(video.clips[0]) == [14, 18, 22, 26, 30, 34, 38, 42]
    meta = video.metadata
    assert (meta.width, meta.height, meta.fps, meta.num_frames) == (64, 48, 30.0, 60)
    assert meta.duration_s == pytest.approx(2.0, abs=0.05)
    assert meta.clip_start_s == pytest.approx(14 / 30) and meta.clip_end_s == pytest.approx(46 / 30)
    assert meta.rotation == 0 and meta.corrupt_frames == 0


def test_codec_names_are_the_codecs_not_the_decoder_libraries(tmp_path):
    path = encode(tmp_path, "av1.webm", codec=av1_encoder(), num_frames=10)
    assert decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT)).metadata.codec == "av1"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vp9.webm", {"codec": "libvpx-vp9"}),
        ("mpeg4.avi", {"codec": "mpeg4"}),
        ("h264-444.mp4", {"codec": "libx264", "pix_fmt": "yuv444p"}),
        ("mjpeg-444.avi", {"codec": "mjpeg", "pix_fmt": "yuvj444p"}),
    ],
)
def test_odd_frame_sizes(tmp_path, name, kwargs):
    path = encode(tmp_path, name, width=321, height=241, num_frames=40, **kwargs)
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    assert video.clips.shape == (1, 8, 224, 224, 3)
    assert indices(video.clips[0]) == frame_positions(40, SHORT)[0].tolist()
    assert (video.metadata.width, video.metadata.height) == (321, 241)


def test_portrait_video_is_cropped_along_its_long_side(tmp_path):
    path = encode(tmp_path, "portrait.mp4", width=240, height=320, num_frames=40)
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    assert video.clips.shape == (1, 8, 224, 224, 3)
    assert indices(video.clips[0]) == frame_positions(40, SHORT)[0].tolist()
    assert (video.metadata.width, video.metadata.height) == (240, 320)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied_as_ffmpeg_does(tmp_path, rotation):
    # Displayed 320x240; stored turned back by `rotation`, with a display matrix saying so.
    path = encode(tmp_path, f"rot{rotation}.mp4", width=320, height=240, rotation=rotation)
    with av.open(str(path)) as container:
        stored = next(container.decode(video=0))
    if rotation != 180:
        assert (stored.width, stored.height) == (240, 320)
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    # read_index checks the guard stripes, so a picture turned the wrong way fails here
    assert indices(video.clips[0]) == frame_positions(30, SHORT)[0].tolist()
    assert video.metadata.rotation == rotation
    assert (video.metadata.width, video.metadata.height) == (320, 240)
    # turned the other way (a sign error), or not at all for 180, the guards come out reversed
    for wrong in (np.rot90(video.clips[0, 0], 2), np.rot90(video.clips[0, 0], -1)):
        with pytest.raises(ValueError, match="guard"):
            read_index(wrong)


def test_rotated_portrait_phone_video_is_upright_and_uncropped_at_the_right_size(tmp_path):
    path = encode(tmp_path, "phone.mov", width=180, height=320, rotation=270, num_frames=20)
    unrotated = ProcessorConfig(shortest_edge=224, do_center_crop=False)
    video = decode_video(DecodeRequest(str(path), SHORT, unrotated))
    assert video.clips.shape == (1, 8, 398, 224, 3)  # portrait: 224 wide, 224 * 320 / 180 high
    assert indices(video.clips[0]) == frame_positions(20, SHORT)[0].tolist()


def test_variable_frame_rate_picks_the_frame_nearest_each_sampled_time(tmp_path):
    rng = np.random.default_rng(3)
    timestamps = np.cumsum(rng.choice([1 / 60, 1 / 30, 1 / 10], size=90))
    timestamps = np.round(timestamps - timestamps[0], 4)
    path = encode(tmp_path, "vfr.mp4", num_frames=90, timestamps=timestamps.tolist())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps, frames = float(stream.average_rate), stream.frames
    targets = frame_positions(frames, SHORT)[0] / fps
    expected = [int(np.argmin(np.abs(timestamps - t))) for t in targets]
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    assert indices(video.clips[0]) == expected
    assert len(np.unique(np.diff(timestamps).round(2))) == 3  # really variable


def test_containers_without_a_frame_count_estimate_it_from_the_duration(tmp_path):
    path = encode(tmp_path, "vp9.webm", codec="libvpx-vp9", num_frames=75)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    assert video.metadata.num_frames == 75
    assert indices(video.clips[0]) == frame_positions(75, SHORT)[0].tolist()


def test_single_frame_video_repeats_its_frame(tmp_path):
    path = encode(tmp_path, "one.mp4", num_frames=1)
    video = decode_video(DecodeRequest(str(path), SamplingConfig(num_frames=32), CHECKPOINT))
    assert video.clips.shape == (1, 32, 224, 224, 3)
    assert indices(video.clips[0]) == [0] * 32
    assert video.metadata.num_frames == 1


def test_video_shorter_than_the_span_is_sampled_whole(tmp_path):
    path = encode(tmp_path, "short.mkv", num_frames=20)
    video = decode_video(
        DecodeRequest(str(path), SamplingConfig(num_frames=8, frame_sample_rate=4), CHECKPOINT)
    )
    assert indices(video.clips[0]) == [0, 2, 5, 7, 10, 12, 15, 17]
    assert video.metadata.clip_start_s == 0 and video.metadata.clip_end_s == pytest.approx(20 / 30)


def test_uniform_views_across_a_long_gop_video_seek_between_views(tmp_path):
    path = encode(tmp_path, "long.mp4", num_frames=600, gop=60, width=96, height=64)
    sampling = SamplingConfig(
        num_frames=4, frame_sample_rate=4, temporal_views="uniform", num_temporal_views=4
    )
    video = decode_video(DecodeRequest(str(path), sampling, CHECKPOINT))
    assert video.clips.shape == (4, 4, 224, 224, 3)
    expected = frame_positions(600, sampling)
    assert expected[:, 0].tolist() == [0, 195, 389, 584]
    assert [indices(clip) for clip in video.clips] == expected.tolist()
    assert video.metadata.clip_start_s == 0 and video.metadata.clip_end_s == pytest.approx(20.0)


def test_centre_clip_reads_only_part_of_a_long_video(tmp_path):
    # high quality, so the file is large next to PyAV's 32 KiB reads
    path = encode(
        tmp_path, "long.mp4", num_frames=300, gop=30, width=160, height=120, options={"crf": "4"}
    )
    video = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    assert indices(video.clips[0]) == frame_positions(300, SHORT)[0].tolist()
    assert video.metadata.bytes_read < 0.4 * path.stat().st_size


def test_three_spatial_crops_are_start_centre_and_end_of_the_long_side(tmp_path):
    path = encode(tmp_path, "wide.mp4", width=160, height=90, num_frames=30)
    three = decode_video(
        DecodeRequest(str(path), SamplingConfig(num_frames=4, spatial_crops="three"), CHECKPOINT)
    )
    uncropped = ProcessorConfig(shortest_edge=224, do_center_crop=False)
    whole = decode_video(DecodeRequest(str(path), SamplingConfig(num_frames=4), uncropped)).clips[0]
    assert whole.shape == (4, 224, 398, 3)
    assert three.clips.shape == (3, 4, 224, 224, 3)
    np.testing.assert_array_equal(three.clips[0], whole[:, :, :224])
    np.testing.assert_array_equal(three.clips[1], whole[:, :, 87:311])
    np.testing.assert_array_equal(three.clips[2], whole[:, :, -224:])


def test_views_are_temporal_major_then_spatial(tmp_path):
    path = encode(tmp_path, "v.mp4", num_frames=100)
    sampling = SamplingConfig(
        num_frames=2,
        frame_sample_rate=4,
        temporal_views="uniform",
        num_temporal_views=2,
        spatial_crops="three",
    )
    video = decode_video(DecodeRequest(str(path), sampling, CHECKPOINT))
    assert [indices(clip) for clip in video.clips] == [[0, 4]] * 3 + [[92, 96]] * 3


def test_crop_larger_than_the_picture_is_zero_padded_like_transformers(tmp_path):
    path = encode(tmp_path, "tiny.mp4", width=64, height=48, num_frames=10)
    processor = ProcessorConfig(do_resize=False, crop_height=56, crop_width=60)
    video = decode_video(DecodeRequest(str(path), SamplingConfig(num_frames=2), processor))
    frame = video.clips[0, 0]
    assert frame.shape == (56, 60, 3)
    assert not frame[:4].any() and not frame[-4:].any()  # 8 rows of padding split 4 / 4
    assert frame[4:-4].min() > 0


def test_three_crops_need_a_crop_size():
    with pytest.raises(ValueError, match="do_center_crop"):
        decode_video(
            DecodeRequest(
                "unused.mp4",
                SamplingConfig(spatial_crops="three"),
                ProcessorConfig(do_center_crop=False),
            )
        )


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_decoder_threads_give_the_same_pixels(tmp_path, codec):
    path = encode(tmp_path, "t.mp4", codec=codec, width=320, height=240, num_frames=120)
    one = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT, config=DecodeConfig(threads=1)))
    two = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT, config=DecodeConfig(threads=2)))
    np.testing.assert_array_equal(one.clips, two.clips)


def test_one_thread_conversion_starts_no_threads(tmp_path):
    """swscale left to itself starts a thread per core in every decode actor."""
    path = encode(tmp_path, "t.mp4", width=640, height=480, num_frames=2)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    before = thread_count()
    converter = FrameConverter(CHECKPOINT, threads=1)
    converter(frame)
    assert thread_count() == before


def thread_count() -> int:
    """This process's threads (Linux)."""
    return len(os.listdir("/proc/self/task"))


def test_file_urls_work_like_paths(tmp_path):
    path = encode(tmp_path, "a.mp4", num_frames=20)
    by_path = decode_video(DecodeRequest(str(path), SHORT, CHECKPOINT))
    by_url = decode_video(DecodeRequest(path.as_uri(), SHORT, CHECKPOINT))
    np.testing.assert_array_equal(by_path.clips, by_url.clips)


@pytest.mark.parametrize("rotation", [0, 90])
def test_one_frame_at_a_time_for_a_thumbnail(tmp_path, rotation):
    """`frame_at_s`: the frame nearest that time (a VFR video's timestamps, from its first
    frame), resized to the short side and never cropped, in display orientation."""
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 0.9, 1.4]  # seconds
    path = encode(
        tmp_path, "vfr.mp4", num_frames=7, width=96, height=48, timestamps=times, rotation=rotation
    )
    processor = ProcessorConfig(shortest_edge=32, do_center_crop=False)
    for at_s, frame in [(0.52, 3), (0.54, 4), (0.7, 4), (1.2, 6), (9.0, 6)]:
        request = DecodeRequest(str(path), SamplingConfig(num_frames=1), processor, frame_at_s=at_s)
        decoded = decode_video(request)
        assert decoded.clips.shape == (1, 1, 32, 64, 3)  # 96x48 displayed, whatever the rotation
        assert read_index(decoded.clips[0, 0]) == frame
        assert decoded.metadata.clip_start_s == decoded.metadata.clip_end_s == at_s
