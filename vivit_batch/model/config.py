"""`VivitConfig`: ViViT hyper-parameters, read from `config.json` files as published."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONFIG_FILE = "config.json"
ACCEPTED_ARCHITECTURES = {
    "VivitForVideoClassification",
    "ViViTForVideoClassification",
    "VivitModel",
}


@dataclass
class VivitConfig:
    image_size: int = 224
    num_frames: int = 32
    tubelet_size: tuple[int, int, int] = (2, 16, 16)
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_fast"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    id2label: dict[int, str] = field(default_factory=dict)

    def __post_init__(self):
        frames, height, width = self.tubelet_size  # config.json gives a list
        self.tubelet_size = (frames, height, width)
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_frames % frames or self.image_size % height or self.image_size % width:
            raise ValueError(
                f"num_frames {self.num_frames} and image_size {self.image_size} must be "
                f"multiples of tubelet_size {self.tubelet_size}"
            )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(time, rows, columns) of the patch tokens at the configured input size."""
        frames, height, width = self.tubelet_size
        return self.num_frames // frames, self.image_size // height, self.image_size // width

    @classmethod
    def from_dict(cls, data: dict) -> VivitConfig:
        """Build from a `config.json` dict; unknown keys (`video_size`, ...) are ignored.

        The published `google/vivit-b-16x2-kinetics400` config has `video_size` but neither
        `num_frames` nor `image_size`, so those fall back to `video_size`, then to the defaults.
        """
        architectures = set(data.get("architectures") or []) - ACCEPTED_ARCHITECTURES
        if architectures:
            raise ValueError(
                f"config.json describes {sorted(architectures)}, not a ViViT video classifier "
                f"(expected one of {sorted(ACCEPTED_ARCHITECTURES)})"
            )
        video_size = data.get("video_size") or [cls.num_frames, cls.image_size, cls.image_size]
        known = {name for name in cls.__dataclass_fields__}
        kwargs = {key: value for key, value in data.items() if key in known}
        kwargs.setdefault("num_frames", video_size[0])
        kwargs.setdefault("image_size", video_size[1])
        if "id2label" not in kwargs:  # transformers' PretrainedConfig default is 2 labels
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(data.get("num_labels", 2))}
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> VivitConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        """A `config.json` that both this package and `transformers` read."""
        data = asdict(self)
        data["tubelet_size"] = list(self.tubelet_size)
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        data["label2id"] = {v: k for k, v in self.id2label.items()}
        data["model_type"] = "vivit"
        data["architectures"] = ["VivitForVideoClassification"]
        return data

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
