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
LIMITS = {
    "num_labels": 100_000,
    "image_size": 4096,
    "num_frames": 1024,
    "num_channels": 4,
    "hidden_size": 16_384,
    "num_hidden_layers": 256,
    "num_attention_heads": 256,
    "intermediate_size": 65_536,
}
"""Far beyond any published ViViT (Kinetics-400: 400 labels, 32x224x224, hidden 768): a
`config.json` outside them is refused before anything is built from it."""
MAX_CONFIG_BYTES = 16 * 2**20


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
        _check_sizes(kwargs, data)
        if "id2label" not in kwargs:  # transformers' PretrainedConfig default is 2 labels
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(data.get("num_labels", 2))}
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> VivitConfig:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"{size} bytes: a config.json is a few kB, at most 16 MiB is read")
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


def _check_sizes(kwargs: dict, data: dict) -> None:
    """Every size within `LIMITS` (and tubelet sizes within the input's), before any is used."""
    labels = kwargs.get("id2label")
    if labels is not None and not isinstance(labels, dict):
        raise ValueError(f"id2label is {str(labels)[:40]}: expected an object of id: name")
    sizes = {key: kwargs[key] for key in LIMITS if key in kwargs}
    sizes["num_labels"] = len(labels) if labels is not None else data.get("num_labels", 2)
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LIMITS[key]:
            raise ValueError(
                f"{key} is {str(value)[:40]}: expected a whole number from 1 to {LIMITS[key]:,} "
                "(this is not a ViViT checkpoint vivit-batch can run)"
            )
    tubelet = kwargs.get("tubelet_size", VivitConfig.tubelet_size)
    frames, image = kwargs["num_frames"], kwargs["image_size"]
    if not (
        isinstance(tubelet, (list, tuple))
        and len(tubelet) == 3
        and all(isinstance(t, int) and not isinstance(t, bool) for t in tubelet)
        and 1 <= tubelet[0] <= frames
        and all(1 <= t <= image for t in tubelet[1:])
    ):
        raise ValueError(
            f"tubelet_size is {str(tubelet)[:40]}: expected 3 whole numbers, at most num_frames "
            "and image_size"
        )
