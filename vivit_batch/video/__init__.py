"""The CPU stage: one video URI -> sampled, resized, cropped uint8 clips and metadata."""

from vivit_batch.video.decode import (
    DecodeConfig,
    DecodedVideo,
    DecodeRequest,
    VideoMetadata,
    decode_video,
)
from vivit_batch.video.errors import ErrorCode, VideoError
from vivit_batch.video.sampling import SamplingConfig

__all__ = [
    "DecodeConfig",
    "DecodeRequest",
    "DecodedVideo",
    "ErrorCode",
    "SamplingConfig",
    "VideoError",
    "VideoMetadata",
    "decode_video",
]
