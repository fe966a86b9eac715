"""`load_pretrained`: a ViViT classifier from a hub repo id, a local directory or a weights file.

Weights are read from safetensors or with `torch.load(weights_only=True)`: never unpickled code.
Every failure is a `CheckpointError` that says what is wrong and what to do about it.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import torch

from vivit_batch.errors import CheckpointError
from vivit_batch.fingerprint import fingerprint
from vivit_batch.model.checkpoint import CheckpointInfo
from vivit_batch.model.config import CONFIG_FILE, VivitConfig
from vivit_batch.model.modeling import VivitForVideoClassification
from vivit_batch.processor import PREPROCESSOR_FILE, PREPROCESSOR_FILES, ProcessorConfig

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
UNUSED_KEY_PREFIXES = ("vivit.pooler.",)  # a VivitModel head the classifier does not use
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Each `model.precision` as torch's dtype: what `load_pretrained(dtype=...)` and the
classifier's autocast take."""


def load_pretrained(
    source: str | Path,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> VivitForVideoClassification:
    """Load a classifier in eval mode; `model.checkpoint` says where it came from.

    `source` is a weights file (`.safetensors`, `.bin`, or a shard index `.json`, with
    `config.json` beside it), a directory in Hugging Face layout, or a hub repo id, which is
    resolved through huggingface_hub's cache (`HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN` apply).
    """
    info = resolve_checkpoint(source, revision)
    config = read_config(info.directory)
    model = VivitForVideoClassification(config)
    state, sha256 = read_weights(info.weight_files)
    load_state_dict_strict(model, state)
    # The hash of the bytes the tensors came from: a file replaced since `resolve_checkpoint`
    # hashed it cannot pass for the one the driver checked.
    model.checkpoint = replace(info, weights_sha256=sha256)
    model.requires_grad_(False)
    return model.to(device=device, dtype=_torch_dtype(dtype)).eval()


def inspect_pretrained(
    source: str | Path, revision: str | None = None
) -> tuple[CheckpointInfo, VivitConfig]:
    """Check that `source` loads, as `load_pretrained` would, without reading the weights into
    memory: the config is read and every key and shape checked from the files' headers."""
    info = resolve_checkpoint(source, revision)
    config = read_config(info.directory)
    with torch.device("meta"):
        expected = VivitForVideoClassification(config).state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    for file in info.weight_files:
        shapes.update(_read_weight_shapes(file))
    _raise_on_mismatch({k: tuple(v.shape) for k, v in expected.items()}, shapes)
    return info, config


def save_pretrained(
    model: VivitForVideoClassification, directory: str | Path, processor: ProcessorConfig
) -> None:
    """Write config.json, preprocessor_config.json and model.safetensors in Hugging Face layout."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    (directory / PREPROCESSOR_FILE).write_text(json.dumps(processor.to_dict(), indent=2) + "\n")
    state = {key: tensor.contiguous() for key, tensor in model.state_dict().items()}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "model.safetensors").chmod(0o644)  # safetensors writes 0600


def resolve_checkpoint(source: str | Path, revision: str | None = None) -> CheckpointInfo:
    """Find the config and weight files for `source` (downloading from the hub if needed)."""
    path = Path(source).expanduser()
    if path.is_file():
        directory, weight_files = path.parent, _weight_files_for(path)
    elif path.is_dir():
        directory = path
        weight_files = _weight_files_for(_first_weight_file(path))
    elif _looks_like_local_path(str(source)):
        raise CheckpointError(f"model {source}: no such file or directory")
    else:
        directory = _download_from_hub(str(source), revision)
        weight_files = _weight_files_for(_first_weight_file(directory))
    processor, processor_file = ProcessorConfig.from_pretrained_dir(directory)
    return CheckpointInfo(
        source=str(source),
        revision=revision,
        directory=directory,
        weight_files=weight_files,
        weights_sha256=fingerprint(weight_files),
        processor=processor,
        processor_file=processor_file,
        # huggingface_hub's cache keeps each commit in snapshots/<commit sha>/
        commit=None if path.exists() else directory.name,
    )


def read_config(directory: Path) -> VivitConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG_FILE}: a checkpoint needs one beside its weights"
        )
    try:
        return VivitConfig.from_json_file(path)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from error


def read_weights(files: tuple[Path, ...]) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of `files`, and the sha256 of the bytes they were read from (as
    `fingerprint` computes it): each file is read once."""
    state: dict[str, torch.Tensor] = {}
    digest = hashlib.sha256()
    for file in files:
        data = file.read_bytes()
        digest.update(data)
        state.update(_read_weight_file(file, data))
    return state, digest.hexdigest()


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load with every key and shape checked; the error lists all that does not fit."""
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
    _raise_on_mismatch(
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
        {k: tuple(v.shape) for k, v in state.items()},
    )
    model.load_state_dict(state, strict=True)


def _raise_on_mismatch(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> None:
    found = {k: v for k, v in found.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
    problems = []
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_some(unexpected)}")
    for key in sorted(expected.keys() & found.keys()):
        if expected[key] != found[key]:
            problems.append(
                f"{key}: checkpoint has shape {found[key]}, config.json implies {expected[key]}"
            )
    if problems:
        raise CheckpointError(
            "the weights do not fit a ViViT classifier built from config.json: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights and that they are a "
            "VivitForVideoClassification checkpoint."
        )


def _first_weight_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}"
    )


def _weight_files_for(path: Path) -> tuple[Path, ...]:
    """The file itself, or the shards a `*.index.json` lists (each once, in listed order)."""
    if not path.name.endswith(".json"):
        return (path,)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: not a shard index with a 'weight_map' ({error})") from error
    shards = tuple(path.parent / name for name in dict.fromkeys(weight_map.values()))
    absent = [str(shard) for shard in shards if not shard.is_file()]
    if absent:
        raise CheckpointError(f"{path} lists shards that are not there: {_some(absent)}")
    return shards


def _read_weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from the safetensors header or a memory-mapped torch file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as weights:
                names = weights.keys()  # a safe_open handle is not iterable
                return {key: tuple(weights.get_slice(key).get_shape()) for key in names}
        except Exception as error:  # safetensors raises its own untyped errors
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    shapes = _read_weight_file(path)  # memory-mapped: no tensor data is read
    return {key: tuple(tensor.shape) for key, tensor in shapes.items()}


def _read_weight_file(path: Path, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the weights file at `path`, parsed from `data` (its bytes) when given,
    else memory-mapped from the file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load, load_file

        try:
            return load_file(path) if data is None else load(data)
        except Exception as error:  # safetensors raises its own untyped errors
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        source = path if data is None else io.BytesIO(data)
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=data is None)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} is a pickle that needs arbitrary Python code to load, which vivit-batch "
            "refuses (only tensors are read: torch.load(weights_only=True)). If you trust the "
            "file, convert it to model.safetensors with plain tensors and load that instead."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a flat state dict of tensors")
    return state


def _download_from_hub(repo_id: str, revision: str | None) -> Path:
    """Fetch config, preprocessor config and weights into the hub cache; return the snapshot dir."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None

    try:
        config = Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision))
    except HFValidationError as error:
        raise CheckpointError(
            f"model {repo_id!r} is neither an existing local path nor a valid hub repo id"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise CheckpointError(
            f"model {repo_id!r} (revision {revision or 'main'}) is not on the Hugging Face hub, "
            "or is private: check the id and revision, and set HF_TOKEN for private repos"
        ) from error
    except LocalEntryNotFoundError as error:
        raise CheckpointError(
            f"model {repo_id!r}: the Hugging Face hub cannot be reached and the model is not in "
            "the local cache. On a machine without network, pass a local directory or weights "
            "file as --model, or fill the cache where the hub is reachable (`hf download "
            f"{repo_id}` with the same HF_HOME) and set HF_HUB_OFFLINE=1."
        ) from error
    for name in PREPROCESSOR_FILES:
        if fetch(name) is not None:
            break
    for name in WEIGHT_FILES:
        index_or_weights = fetch(name)
        if index_or_weights is None:
            continue
        if name.endswith(".json"):
            for shard in dict.fromkeys(
                json.loads(index_or_weights.read_text())["weight_map"].values()
            ):
                if fetch(shard) is None:
                    raise CheckpointError(f"model {repo_id!r}: shard {shard} cannot be fetched")
        return config.parent
    raise CheckpointError(
        f"model {repo_id!r} has no weights in the cache or on the hub "
        f"(looked for {', '.join(WEIGHT_FILES)}); with HF_HUB_OFFLINE=1 they must be cached"
    )


def _looks_like_local_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
