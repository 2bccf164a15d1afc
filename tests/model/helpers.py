"""Test stand-ins for the KV cache manager and model runner: block tables from a
shuffled free list (so every request's blocks are non-contiguous) and one step's
``BatchLayout`` with the positions of its tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention.base import BatchLayout


def make_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    # NaN-filled: attending to a slot that was never written poisons the output.
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    return [torch.full(shape, float("nan"), dtype=dtype) for _ in range(num_layers)]


@dataclass(frozen=True)
class Step:
    layout: BatchLayout
    request_ids: list[str]  # in layout order
    positions: torch.Tensor  # [T] int64
    token_ranges: list[tuple[int, int]]  # per request: positions start..end covered this step


class PagedRequests:
    """Block tables and computed-token counts of a handful of test requests."""

    def __init__(self, num_blocks: int, block_size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.free_blocks: list[int] = torch.randperm(num_blocks, generator=generator).tolist()
        self.block_size = block_size
        self.block_tables: dict[str, list[int]] = {}
        self.num_computed: dict[str, int] = {}

    def step(self, schedule: list[tuple[str, int]]) -> Step:
        """``schedule``: (request id, new tokens) with the decodes (1 new token after some
        context) first. Grows block tables and advances the computed counts."""
        query_lens, context_lens, tables, ranges = [], [], [], []
        for request_id, num_new in schedule:
            start = self.num_computed.get(request_id, 0)
            table = self.block_tables.setdefault(request_id, [])
            while len(table) * self.block_size < start + num_new:
                table.append(self.free_blocks.pop())
            query_lens.append(num_new)
            context_lens.append(start)
            tables.append(list(table))
            ranges.append((start, start + num_new))
            self.num_computed[request_id] = start + num_new
        num_decodes = 0
        while (num_decodes < len(schedule) and query_lens[num_decodes] == 1
               and context_lens[num_decodes] > 0):
            num_decodes += 1
        layout = BatchLayout(query_lens, context_lens, tables, num_decodes, self.block_size)
        positions = torch.cat([torch.arange(start, end) for start, end in ranges])
        return Step(layout, [request_id for request_id, _ in schedule], positions, ranges)
