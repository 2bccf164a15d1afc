"""Paged attention on the CPU with torch ops.

``prepare`` turns the step's ``BatchLayout`` into index tensors once; every layer's
``forward`` then only writes its new K/V into the cache and attends:

* decodes (one query each) are computed together, split-K style: every decode
  request's keys are cut into fixed-size chunks (the last one padded with masked
  keys, never more than ``DECODE_CHUNK - 1``), one flash-attention call covers all
  chunks of all requests, and a segment softmax over each request's chunks (max and
  sum of their log-sum-exps) merges the partial results. The number of torch ops does
  not grow with the batch and there is no padding to the longest request;
* prefill chunks (few per step) each run one ``scaled_dot_product_attention`` over the
  gathered earlier context plus the chunk's own tokens.

Keys are gathered with ``F.embedding`` on the cache seen as a ``[slots, KV * D]`` table:
on CPU it is several times faster than ``index_select`` on the slot dimension.
Shapes: T new tokens, H query heads, KV key/value heads, G = H // KV, D head dim,
N decode chunks, C = DECODE_CHUNK.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kernels.attention.base import AttentionBackend, AttentionMetadata, BatchLayout

DECODE_CHUNK = 64  # keys per decode chunk: big enough for the flash kernel, small tail padding

# The op behind F.scaled_dot_product_attention on CPU; unlike the public API it also
# returns the log-sum-exp of every query row, which the split-K merge needs.
_flash_attention_with_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@dataclass(frozen=True)
class PrefillChunk:
    query_start: int  # first row of this request's queries in the step's [T] layout
    query_end: int
    # Cache slots of context + new tokens and the causal mask offset by the context
    # length; both None when there is no earlier context (plain causal over the chunk).
    key_slots: torch.Tensor | None  # [context + query_len] int64
    mask: torch.Tensor | None  # [query_len, context + query_len] bool, True = attend


@dataclass(frozen=True)
class CpuAttentionMetadata(AttentionMetadata):
    slot_mapping: torch.Tensor  # [T] int64
    num_decodes: int
    # One decode: the slots of its keys. Several: the slots of every chunk's C keys.
    decode_key_slots: torch.Tensor  # [L] or [N, C] int64
    decode_chunk_request: torch.Tensor | None  # [N] int64: decode request owning each chunk
    decode_chunk_request_index: torch.Tensor | None  # [N, KV, G] the same, expanded for scatter_reduce
    decode_chunk_mask: torch.Tensor | None  # [N, 1, 1, C] float32: 0 for real keys, -inf for the padding
    prefills: tuple[PrefillChunk, ...]


def token_ranges(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``starts[r] .. starts[r] + lens[r] - 1`` of every request, concatenated,
    and the request index of each. Vectorised: no loop over requests."""
    requests = np.repeat(np.arange(len(lens)), lens)
    first_row = np.cumsum(lens) - lens
    return requests, np.arange(int(lens.sum())) - first_row[requests] + starts[requests]


def slots_of(table_flat: np.ndarray, table_offsets: np.ndarray, requests: np.ndarray,
             positions: np.ndarray, block_size: int) -> np.ndarray:
    """Cache slot of token ``positions[i]`` of request ``requests[i]``; ``table_offsets[r]``
    is where request r's block ids start in ``table_flat``."""
    blocks = table_flat[table_offsets[requests] + positions // block_size]
    return blocks * block_size + positions % block_size


class CpuAttentionBackend(AttentionBackend):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__(num_heads, num_kv_heads, head_dim, scale)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.group = num_heads // num_kv_heads

    # ------------------------------------------------------------------ per step

    def prepare(self, layout: BatchLayout, device: torch.device) -> CpuAttentionMetadata:
        query_lens = np.asarray(layout.query_lens, dtype=np.int64)
        context_lens = np.asarray(layout.context_lens, dtype=np.int64)
        table_lens = np.fromiter((len(t) for t in layout.block_tables), np.int64, len(layout.block_tables))
        table_offsets = np.cumsum(table_lens) - table_lens
        table_flat = np.fromiter((b for t in layout.block_tables for b in t), np.int64, int(table_lens.sum()))
        block_size, num_decodes = layout.block_size, layout.num_decodes

        def to_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device)

        def slots_in_range(first: int, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
            requests, positions = token_ranges(starts, lens)
            return slots_of(table_flat, table_offsets[first:], requests, positions, block_size)

        slot_mapping = slots_in_range(0, context_lens, query_lens)
        prefills = []
        query_start = num_decodes
        for i in range(num_decodes, len(query_lens)):
            query_len, context_len = int(query_lens[i]), int(context_lens[i])
            key_slots = mask = None
            if context_len:
                key_lens = context_lens[i:i + 1] + query_len
                key_slots = to_device(slots_in_range(i, np.zeros(1, np.int64), key_lens))
                key_pos = torch.arange(context_len + query_len, device=device)
                mask = key_pos <= torch.arange(query_len, device=device).unsqueeze(1) + context_len
            prefills.append(PrefillChunk(query_start, query_start + query_len, key_slots, mask))
            query_start += query_len

        decode_lens = context_lens[:num_decodes] + 1
        chunk_request = chunk_request_index = chunk_mask = None
        if num_decodes == 1:
            decode_slots = slots_in_range(0, np.zeros(1, np.int64), decode_lens)
        else:
            chunks_per_request = -(-decode_lens // DECODE_CHUNK)
            starts = np.zeros(num_decodes, np.int64)
            requests, positions = token_ranges(starts, chunks_per_request * DECODE_CHUNK)
            padding = positions >= decode_lens[requests]
            # Padding keys read token 0 (always written) and are masked out.
            decode_slots = slots_of(table_flat, table_offsets, requests, np.where(padding, 0, positions),
                                    block_size).reshape(-1, DECODE_CHUNK)
            chunk_request = to_device(np.repeat(np.arange(num_decodes), chunks_per_request))
            chunk_request_index = chunk_request.view(-1, 1, 1).expand(-1, self.num_kv_heads, self.group)
            chunk_mask = torch.zeros(padding.shape, device=device).masked_fill_(
                to_device(padding), float("-inf")).view(-1, 1, 1, DECODE_CHUNK)

        return CpuAttentionMetadata(
            slot_mapping=to_device(slot_mapping),
            num_decodes=num_decodes,
            decode_key_slots=to_device(decode_slots),
            decode_chunk_request=chunk_request,
            decode_chunk_request_index=chunk_request_index,
            decode_chunk_mask=chunk_mask,
            prefills=tuple(prefills),
        )

    # ------------------------------------------------------------------ per layer

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KV, D]
        v: torch.Tensor,  # [T, KV, D]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, KV, D]
        meta: CpuAttentionMetadata,
    ) -> torch.Tensor:  # [T, H, D]
        cache = kv_cache.view(2, -1, self.num_kv_heads, self.head_dim)  # [2, slots, KV, D]
        cache[0].index_copy_(0, meta.slot_mapping, k)
        cache[1].index_copy_(0, meta.slot_mapping, v)
        key_table, value_table = kv_cache.view(2, cache.shape[1], -1)  # [slots, KV * D] each

        outputs = []
        num_decodes = meta.num_decodes
        if num_decodes == 1:
            outputs.append(self._decode_one(q[:1], key_table, value_table, meta))
        elif num_decodes > 1:
            outputs.append(self._decode_batch(q[:num_decodes], key_table, value_table, meta))
        for chunk in meta.prefills:
            outputs.append(self._prefill(q, k, v, key_table, value_table, chunk))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _gather(self, table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return F.embedding(slots, table).view(*slots.shape, self.num_kv_heads, self.head_dim)

    def _decode_one(self, q: torch.Tensor, key_table: torch.Tensor, value_table: torch.Tensor,
                    meta: CpuAttentionMetadata) -> torch.Tensor:
        # The G query heads sharing a kv head act as G query rows of one attention call.
        keys = self._gather(key_table, meta.decode_key_slots).transpose(0, 1).unsqueeze(0)  # [1, KV, L, D]
        values = self._gather(value_table, meta.decode_key_slots).transpose(0, 1).unsqueeze(0)
        queries = q.view(1, self.num_kv_heads, self.group, self.head_dim)
        out = F.scaled_dot_product_attention(queries, keys, values, scale=self.scale)  # [1, KV, G, D]
        return out.view(1, self.num_heads, self.head_dim)

    def _decode_batch(self, q: torch.Tensor, key_table: torch.Tensor, value_table: torch.Tensor,
                      meta: CpuAttentionMetadata) -> torch.Tensor:
        num_decodes, chunk_request = q.shape[0], meta.decode_chunk_request
        keys = self._gather(key_table, meta.decode_key_slots).transpose(1, 2)  # [N, KV, C, D]
        values = self._gather(value_table, meta.decode_key_slots).transpose(1, 2)
        queries = q.reshape(num_decodes, self.num_kv_heads, self.group, self.head_dim)
        chunk_out, chunk_lse = _flash_attention_with_lse(
            queries.index_select(0, chunk_request), keys, values, 0.0, False,
            attn_mask=meta.decode_chunk_mask, scale=self.scale)  # [N, KV, G, D], [N, KV, G] float32

        # Segment softmax over each request's chunks: chunk weight = exp(lse - request max).
        per_request = (num_decodes, self.num_kv_heads, self.group)
        request_max = chunk_lse.new_full(per_request, -torch.inf).scatter_reduce_(
            0, meta.decode_chunk_request_index, chunk_lse, "amax")
        weights = (chunk_lse - request_max.index_select(0, chunk_request)).exp_()  # [N, KV, G]
        total = chunk_lse.new_zeros(per_request).index_add_(0, chunk_request, weights)
        out = chunk_lse.new_zeros(*per_request, self.head_dim).index_add_(
            0, chunk_request, chunk_out * weights.unsqueeze(-1))
        return (out / total.unsqueeze(-1)).to(q.dtype).view(num_decodes, self.num_heads, self.head_dim)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_table: torch.Tensor,
                 value_table: torch.Tensor, chunk: PrefillChunk) -> torch.Tensor:
        rows = slice(chunk.query_start, chunk.query_end)
        queries = q[rows].transpose(0, 1).unsqueeze(0)  # [1, H, Lq, D]
        if chunk.key_slots is None:
            keys, values, mask = k[rows], v[rows], None
        else:
            keys = self._gather(key_table, chunk.key_slots)
            values = self._gather(value_table, chunk.key_slots)
            mask = chunk.mask
        out = F.scaled_dot_product_attention(
            queries, keys.transpose(0, 1).unsqueeze(0), values.transpose(0, 1).unsqueeze(0),
            attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=True)  # [1, H, Lq, D]
        return out[0].transpose(0, 1)  # [Lq, H, D]
