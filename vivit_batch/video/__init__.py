"""The CPU stage: one video URI -> sampled, resized, cropped uint8 clips and metadata."""

from vivit_batch.video.decode import (
    DecodedVideo,
    DecodeRequest,
    VideoMetadata,
    decode_video,
)
from vivit_batch.video.errors import ErrorCode, VideoError

__all__ = [
    "DecodeRequest",
    "DecodedVideo",
    "ErrorCode",
    "VideoError",
    "VideoMetadata",
    "decode_video",
]
