"""ViViT (Arnab et al., 2021), model 1 "spatio-temporal attention", in plain PyTorch.

Module and parameter names follow the Hugging Face checkpoints exactly, so their state dicts load
with strict checking and no renaming. Read top to bottom: tubelet embedding -> pre-norm
transformer layers -> final LayerNorm -> classifier on the CLS token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vivit_batch.model.config import VivitConfig

if TYPE_CHECKING:
    from vivit_batch.model.checkpoint import CheckpointInfo

# hidden_act -> (activation, in-place version or None). The in-place one is for tensors that do
# not require grad (inference): it spares a second (tokens x intermediate) buffer per layer.
_TANH_GELU = (
    partial(F.gelu, approximate="tanh"),
    partial(torch.ops.aten.gelu_, approximate="tanh"),
)
Activation = Callable[[torch.Tensor], torch.Tensor]
ACTIVATIONS: dict[str, tuple[Activation, Activation | None]] = {
    "gelu_fast": _TANH_GELU,  # transformers' FastGELUActivation
    "gelu_new": _TANH_GELU,
    "gelu_pytorch_tanh": _TANH_GELU,
    "gelu": (F.gelu, torch.ops.aten.gelu_),
    "relu": (F.relu, F.relu_),
    "silu": (F.silu, partial(F.silu, inplace=True)),
    "quick_gelu": (lambda x: x * torch.sigmoid(1.702 * x), None),
}


@dataclass
class VideoClassifierOutput:
    logits: torch.Tensor
    """(batch, num_labels)"""
    embedding: torch.Tensor
    """(batch, hidden_size): the CLS token after the final LayerNorm, what the classifier reads."""


class TubeletEmbeddings(nn.Module):
    """Non-overlapping (t, h, w) tubelets -> tokens, ordered time, row, column."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.projection = nn.Conv3d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.tubelet_size,
            stride=config.tubelet_size,
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, T, C, H, W) -> tokens (B, N, hidden) and their (time, rows, columns) grid."""
        patches = self.projection(pixel_values.transpose(1, 2))
        grid = tuple(patches.shape[2:])
        return patches.flatten(2).transpose(1, 2), grid


class VivitEmbeddings(nn.Module):
    def __init__(self, config: VivitConfig):
        super().__init__()
        self.grid = config.token_grid
        num_tokens = 1 + math.prod(self.grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_tokens, config.hidden_size))
        self.patch_embeddings = TubeletEmbeddings(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.patch_embeddings(pixel_values)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.positions_for(grid)

    def positions_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Position embeddings for a token grid, interpolated when it differs from the checkpoint's.

        Space is resized bicubically per time step (as for image ViTs), then time linearly; the
        Hugging Face version reshapes to a square and so ignores the time axis.
        """
        if grid == self.grid:
            return self.position_embeddings
        cls_position, patch_positions = self.position_embeddings.split([1, math.prod(self.grid)], 1)
        dim = patch_positions.shape[-1]
        time, rows, cols = self.grid
        positions = patch_positions.reshape(time, rows, cols, dim).permute(0, 3, 1, 2)
        positions = F.interpolate(positions, size=grid[1:], mode="bicubic", align_corners=False)
        positions = positions.permute(2, 3, 1, 0).reshape(1, grid[1] * grid[2] * dim, time)
        positions = F.interpolate(positions, size=grid[0], mode="linear", align_corners=False)
        positions = positions.reshape(grid[1], grid[2], dim, grid[0]).permute(3, 0, 1, 2)
        return torch.cat([cls_position, positions.reshape(1, -1, dim)], dim=1)


class SelfAttention(nn.Module):
    def __init__(self, config: VivitConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        size = config.hidden_size
        self.query = nn.Linear(size, size, bias=config.qkv_bias)
        self.key = nn.Linear(size, size, bias=config.qkv_bias)
        self.value = nn.Linear(size, size, bias=config.qkv_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, tokens, size = hidden.shape

        def heads(projection: nn.Linear) -> torch.Tensor:
            states = projection(hidden).view(batch, tokens, self.num_heads, -1).transpose(1, 2)
            # CPU flash attention runs ~7% faster on contiguous heads than on strided views, for
            # a copy costing ~1% of it; the CUDA kernels take the views as they are.
            return states.contiguous() if states.is_cpu else states

        context = F.scaled_dot_product_attention(
            heads(self.query), heads(self.key), heads(self.value)
        )
        # Flash attention's output is a transposed view of a (batch, tokens, heads, head size)
        # tensor, so this reshape copies nothing.
        return context.transpose(1, 2).reshape(batch, tokens, size)


class Projection(nn.Module):
    """A Linear kept under `.dense`, as the checkpoints name it."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden)


class Attention(nn.Module):
    def __init__(self, config: VivitConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.output = Projection(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(hidden))


class VivitLayer(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = Projection(config.hidden_size, config.intermediate_size)
        self.output = Projection(config.intermediate_size, config.hidden_size)
        self.activation, self.activation_in_place = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attention(self.layernorm_before(hidden))
        return hidden + self.mlp(self.layernorm_after(hidden))

    def mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.intermediate(hidden)
        if self.activation_in_place is not None and not hidden.requires_grad:
            hidden = self.activation_in_place(hidden)  # nothing will backpropagate through it
        else:
            hidden = self.activation(hidden)
        return self.output(hidden)


class VivitEncoder(nn.Module):
    def __init__(self, config: VivitConfig):
        super().__init__()
        self.layer = nn.ModuleList(VivitLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden)
        return hidden


class VivitModel(nn.Module):
    """Video -> token states after the final LayerNorm, (B, 1 + N, hidden); CLS first."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {config.hidden_act!r} is not one of {sorted(ACTIVATIONS)}"
            )
        self.config = config
        self.embeddings = VivitEmbeddings(config)
        self.encoder = VivitEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values`: (B, T, 3, H, W), already normalised."""
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))


class VivitForVideoClassification(nn.Module):
    checkpoint: CheckpointInfo
    """Where the weights came from (set by `load_pretrained`)."""

    def __init__(self, config: VivitConfig):
        super().__init__()
        self.config = config
        self.vivit = VivitModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.reset_parameters()

    def forward(self, pixel_values: torch.Tensor) -> VideoClassifierOutput:
        embedding = self.vivit(pixel_values)[:, 0]
        return VideoClassifierOutput(logits=self.classifier(embedding), embedding=embedding)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fresh weights as transformers initialises them (truncated normal, zero biases)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.vivit.embeddings.position_embeddings, std=std)
        nn.init.trunc_normal_(self.vivit.embeddings.cls_token, std=std)
