"""Building blocks of a Llama-family model.

The linear layers are tensor-parallel shaped on purpose: today the world size is 1,
but each layer already owns the logic that copies a checkpoint tensor into its own
rows (``weight_loader``), so a later split across devices changes no model file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear import linear

# Tensor-parallel world: a single rank until a multi-device runner exists.
TP_RANK = 0
TP_SIZE = 1


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor,
                          shard_id: int | None = None) -> None:
    """Copy a whole checkpoint tensor into a parameter of the same shape."""
    if param.shape != loaded_weight.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint "
                         f"{tuple(loaded_weight.shape)}")
    param.data.copy_(loaded_weight)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, hidden]
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


# ----------------------------------------------------------------------------- rotary embedding

def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1 frequency remap: long wavelengths slowed by ``factor``, short ones kept,
    a smooth blend in between."""
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]  # same as dividing positions by the factor
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise NotImplementedError(f"rope scaling type {rope_type!r} is not supported "
                              "(supported: default, linear, llama3)")


class RotaryEmbedding(nn.Module):
    """HF/NeoX-style rotary tables (the two halves of each head rotate together).

    ``cos_sin(positions)`` runs once per step and every layer applies the result with
    ``apply_rotary``, so the table lookup is not repeated per layer.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        # rotate_half(x) * sin == swap_halves(x) * [-sin, sin]: the sign lives in the table.
        self.register_buffer("cos_cache", torch.cat([cos, cos], dim=-1), persistent=False)
        self.register_buffer("sin_cache", torch.cat([-sin, sin], dim=-1), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # [T] -> two [T, 1, head_dim] tables broadcasting over heads
        cos = self.cos_cache.index_select(0, positions).to(dtype).unsqueeze(1)
        sin = self.sin_cache.index_select(0, positions).to(dtype).unsqueeze(1)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos/sin from ``RotaryEmbedding.cos_sin``."""
    half = x.shape[-1] // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos, swapped, sin)


# ----------------------------------------------------------------------------- linear layers

class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's output rows split across ranks."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        assert output_size % TP_SIZE == 0, "output size must divide by the tensor-parallel size"
        self.input_size = input_size
        self.output_size = output_size // TP_SIZE
        self.weight = nn.Parameter(torch.empty(self.output_size, input_size))
        self.weight.weight_loader = self.weight_loader
        self.bias = nn.Parameter(torch.empty(self.output_size)) if bias else None
        if self.bias is not None:
            self.bias.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: int | None = None) -> None:
        rows = param.shape[0]
        param.data.copy_(loaded_weight.narrow(0, TP_RANK * rows, rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one matmul
    (q|k|v or gate|up). ``shard_id`` is the index of the projection in ``output_sizes``."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        super().__init__(input_size, sum(output_sizes), bias)
        self.output_sizes = list(output_sizes)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: int | None = None) -> None:
        assert shard_id is not None, "a merged projection is loaded one shard at a time"
        shard_rows = self.output_sizes[shard_id] // TP_SIZE
        offset = sum(self.output_sizes[:shard_id]) // TP_SIZE
        source = loaded_weight.narrow(0, TP_RANK * shard_rows, shard_rows)
        param.data.narrow(0, offset, shard_rows).copy_(source)


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's input columns split across ranks (the ranks' partial sums
    would be all-reduced; with one rank there is nothing to reduce)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        assert input_size % TP_SIZE == 0, "input size must divide by the tensor-parallel size"
        self.input_size = input_size // TP_SIZE
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size))
        self.weight.weight_loader = self.weight_loader
        self.bias = nn.Parameter(torch.empty(output_size)) if bias else None
        if self.bias is not None:
            self.bias.weight_loader = default_weight_loader  # not split: added once after the reduce

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: int | None = None) -> None:
        cols = param.shape[1]
        param.data.copy_(loaded_weight.narrow(1, TP_RANK * cols, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# ----------------------------------------------------------------------------- embeddings

class VocabEmbedding(nn.Module):
    """Token embedding table (the vocabulary would be split across ranks)."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Hidden states -> float32 logits. Tied models share the embedding's parameter."""

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None) -> None:
        super().__init__()
        self.weight = tied_to.weight if tied_to is not None else nn.Parameter(
            torch.empty(vocab_size, hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, hidden] -> [N, vocab]
        return linear(hidden, self.weight).float()
