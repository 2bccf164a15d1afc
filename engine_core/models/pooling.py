"""Turn a flat batch of per-token hidden states into one embedding per sequence.

The pooling recipe comes from a sentence-transformers directory (``modules.json`` lists
a Pooling module and optionally a Normalize one; ``1_Pooling/config.json`` names the
mode). Without one, a decoder's embedding is its last token's state, L2-normalized.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

PoolingMode = Literal["mean", "cls", "last"]

_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
# sentence-transformers' boolean flags in 1_Pooling/config.json -> our modes.
_ST_MODE_FLAGS: dict[str, PoolingMode | None] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": None,
    "pooling_mode_mean_sqrt_len_tokens": None,
    "pooling_mode_weightedmean_tokens": None,
}


@dataclass(frozen=True)
class PoolingConfig:
    mode: PoolingMode = "last"
    normalize: bool = True

    @classmethod
    def from_model_dir(cls, path: str) -> PoolingConfig:
        """Read a sentence-transformers directory; a plain model gets the decoder default."""
        modules_file = os.path.join(path, "modules.json")
        if not os.path.isfile(modules_file):
            return cls()
        with open(modules_file) as f:
            modules = json.load(f)
        pooling = next((m for m in modules if m.get("type") == _ST_POOLING), None)
        normalize = any(m.get("type") == _ST_NORMALIZE for m in modules)
        if pooling is None:
            return cls(normalize=normalize)
        with open(os.path.join(path, pooling.get("path", "1_Pooling"), "config.json")) as f:
            return cls(mode=_mode_from_st_config(json.load(f)), normalize=normalize)


def _mode_from_st_config(st_config: dict) -> PoolingMode:
    if "pooling_mode" in st_config:  # a newer spelling: one string instead of flags
        st_config = {f"pooling_mode_{st_config['pooling_mode']}_tokens": True}
    enabled = [flag for flag in _ST_MODE_FLAGS if st_config.get(flag)]
    if len(enabled) != 1:
        raise NotImplementedError(f"exactly one pooling mode must be enabled, got {enabled or 'none'}")
    mode = _ST_MODE_FLAGS[enabled[0]]
    if mode is None:
        supported = [flag for flag, m in _ST_MODE_FLAGS.items() if m is not None]
        raise NotImplementedError(f"pooling {enabled[0]!r} is not supported (supported: {supported})")
    return mode


# Each reduction maps (hidden [T, H] fp32, seq_lens [B] int64) -> [B, H].

def _mean(hidden: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    seq_ids = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)  # [T]
    sums = hidden.new_zeros(lens.numel(), hidden.shape[1]).index_add_(0, seq_ids, hidden)
    return sums / lens[:, None]


def _cls(hidden: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return hidden[torch.cumsum(lens, 0) - lens]  # each sequence's first token


def _last(hidden: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return hidden[torch.cumsum(lens, 0) - 1]  # each sequence's last token


_REDUCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": _mean, "cls": _cls, "last": _last,
}


class Pooler:
    """``pool(hidden [T, H], seq_lens) -> [B, H]`` float32; the recipe is fixed at construction."""

    def __init__(self, config: PoolingConfig) -> None:
        self.config = config
        self._reduce = _REDUCTIONS[config.mode]
        self._finish: Callable[[torch.Tensor], torch.Tensor] = (
            (lambda x: F.normalize(x, p=2.0, dim=-1)) if config.normalize else (lambda x: x))

    def pool(self, hidden: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
        lens = torch.tensor(seq_lens, dtype=torch.int64, device=hidden.device)
        # Reduce in float32: a bf16 running sum over hundreds of tokens loses digits.
        return self._finish(self._reduce(hidden.float(), lens))
