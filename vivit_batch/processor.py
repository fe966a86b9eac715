"""The checkpoint's image-processor settings (`preprocessor_config.json`, or the
`video_preprocessor_config.json` that newer transformers save: both hold the same keys).

Decode actors use the resize/crop part on CPU (uint8 out); inference actors use the
rescale/normalise part on the device. Defaults are those of `VivitImageProcessor()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREPROCESSOR_FILE = "preprocessor_config.json"
VIDEO_PREPROCESSOR_FILE = "video_preprocessor_config.json"
PREPROCESSOR_FILES = (PREPROCESSOR_FILE, VIDEO_PREPROCESSOR_FILE)
"""Where a checkpoint keeps its preprocessing, in the order they are looked for."""


@dataclass(frozen=True)
class ProcessorConfig:
    do_resize: bool = True
    shortest_edge: int | None = 256
    """Resize so the short side has this length (aspect kept); None when `size` is fixed."""
    resize_height: int | None = None
    resize_width: int | None = None
    do_center_crop: bool = True
    crop_height: int = 224
    crop_width: int = 224
    do_rescale: bool = True
    rescale_factor: float = 1 / 127.5
    offset: bool = True
    """Subtract 1 after rescaling (Hugging Face's ViViT processor does, by default)."""
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, data: dict) -> ProcessorConfig:
        size = data.get("size", {"shortest_edge": 256})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = data.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(
            do_resize=data.get("do_resize", True),
            shortest_edge=size.get("shortest_edge"),
            resize_height=size.get("height"),
            resize_width=size.get("width"),
            do_center_crop=data.get("do_center_crop", True),
            crop_height=crop["height"],
            crop_width=crop["width"],
            do_rescale=data.get("do_rescale", True),
            rescale_factor=data.get("rescale_factor", 1 / 127.5),
            offset=data.get("offset", True),
            do_normalize=data.get("do_normalize", True),
            image_mean=_triple(data.get("image_mean", 0.5)),
            image_std=_triple(data.get("image_std", 0.5)),
        )

    @classmethod
    def from_pretrained_dir(cls, directory: str | Path) -> tuple[ProcessorConfig, str | None]:
        """The settings of the first of `PREPROCESSOR_FILES` in a checkpoint directory, and
        that file's name; `VivitImageProcessor()`'s defaults and None when there is neither."""
        for name in PREPROCESSOR_FILES:
            path = Path(directory) / name
            if path.is_file():
                return cls.from_dict(json.loads(path.read_text())), name
        return cls(), None

    def to_dict(self) -> dict:
        """The settings in `preprocessor_config.json` form (what `VivitImageProcessor` reads)."""
        size: dict[str, int | None]
        if self.shortest_edge is not None:
            size = {"shortest_edge": self.shortest_edge}
        else:
            size = {"height": self.resize_height, "width": self.resize_width}
        return {
            "image_processor_type": "VivitImageProcessor",
            "do_resize": self.do_resize,
            "size": size,
            "resample": 2,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "offset": self.offset,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, computed as `VivitImageProcessor` does."""
        if not self.do_resize:
            return height, width
        if self.shortest_edge is None:
            assert self.resize_height and self.resize_width  # from_dict sets one or the other
            return self.resize_height, self.resize_width
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the frames the model sees."""
        if self.do_center_crop:
            return self.crop_height, self.crop_width
        return self.resized_size(height, width)

    def pixel_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, shift) so that model input = uint8 pixel * scale + shift."""
        scale = np.full(3, self.rescale_factor if self.do_rescale else 1.0)
        shift = np.full(3, -1.0 if (self.do_rescale and self.offset) else 0.0)
        if self.do_normalize:
            mean, std = np.asarray(self.image_mean), np.asarray(self.image_std)
            scale, shift = scale / std, (shift - mean) / std
        return scale.astype(np.float32), shift.astype(np.float32)


def _triple(value: float | list[float]) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value), float(value)
    first, second, third = (float(v) for v in value)
    return first, second, third
