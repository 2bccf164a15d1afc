"""The one interface every attention backend implements.

A step's batch is ragged: the model runner lays the tokens out as all decode
requests first (exactly one query token each), then the prefill chunks (one or
more query tokens, possibly continuing earlier computed context). Nothing is
padded. The runner describes that layout once per step with a ``BatchLayout``;
the backend turns it into its own metadata with ``prepare`` and every layer's
``forward`` receives that metadata as an argument (no globals).

KV cache of one layer: a tensor ``[2, num_blocks, block_size, num_kv_heads, head_dim]``
(index 0 = keys, 1 = values). Token ``t`` of a request whose block table is
``bt`` lives in slot ``bt[t // block_size] * block_size + t % block_size``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchLayout:
    """Host-side description of one step's ragged batch (plain Python lists)."""

    query_lens: list[int]  # new tokens per request, decodes (1) first
    context_lens: list[int]  # tokens already in the cache before this step, per request
    block_tables: list[list[int]]  # block ids per request, covering context + new tokens
    num_decodes: int  # the first num_decodes requests are single-token decodes
    block_size: int

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)


class AttentionMetadata:
    """Backend-specific tensors built once per step by ``AttentionBackend.prepare``."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token's K/V


class AttentionBackend(ABC):
    """Paged attention over a ragged batch of prefills and decodes."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    @abstractmethod
    def prepare(self, layout: BatchLayout, device: torch.device) -> AttentionMetadata:
        """Build the per-step metadata, shared by every layer."""

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Write this step's K/V into the cache, then attend causally over each request."""
