"""What the fast and the end-to-end tests of `test_video_storage` share."""

from __future__ import annotations

from vivit_batch.config import SamplingConfig
from vivit_batch.processor import ProcessorConfig

SAMPLING = SamplingConfig(num_frames=8, frame_sample_rate=4)

PROCESSOR = ProcessorConfig(shortest_edge=224)
