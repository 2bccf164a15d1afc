"""Paged attention on the CPU with plain torch ops.

``prepare`` turns the step's ``BatchLayout`` into index tensors once; every layer's
``forward`` then only writes its new K/V into the cache and attends:

* decodes (one query each) are computed together: every decode request's keys are
  gathered into one flat ``[total_keys, KV, D]`` tensor tagged with a segment id (the
  request owning the key), and a segment softmax replaces the per-request softmax,
  so the cost in torch ops does not grow with the batch;
* prefill chunks (few per step) each run one ``scaled_dot_product_attention`` over the
  gathered earlier context plus the chunk's own tokens.

Shapes: T new tokens, H query heads, KV key/value heads, G = H // KV, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kernels.attention.base import AttentionBackend, AttentionMetadata, BatchLayout


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
    decode_key_slots: torch.Tensor  # [total_keys] int64: every decode request's keys, request by request
    decode_key_segments: torch.Tensor  # [total_keys] int64: decode request owning each key
    prefills: tuple[PrefillChunk, ...]


def token_slots(
    block_table_flat: np.ndarray,  # every request's block ids, concatenated
    table_offsets: np.ndarray,  # [R] where each selected request's block ids start in it
    starts: np.ndarray,  # [R] first token position wanted per request
    lens: np.ndarray,  # [R] number of positions wanted per request
    block_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cache slots of positions ``starts[r] .. starts[r] + lens[r] - 1`` of every request,
    concatenated, plus the request index of each slot. Vectorised: no loop over requests."""
    segments = np.repeat(np.arange(len(lens)), lens)
    first_row = np.cumsum(lens) - lens
    positions = np.arange(int(lens.sum())) - first_row[segments] + starts[segments]
    blocks = block_table_flat[table_offsets[segments] + positions // block_size]
    return blocks * block_size + positions % block_size, segments


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

        slots, _ = token_slots(table_flat, table_offsets, context_lens, query_lens, block_size)
        decode_slots, decode_segments = token_slots(
            table_flat, table_offsets[:num_decodes], np.zeros(num_decodes, np.int64),
            context_lens[:num_decodes] + 1, block_size)

        prefills = []
        query_start = num_decodes
        for i in range(num_decodes, len(query_lens)):
            query_len, context_len = int(query_lens[i]), int(context_lens[i])
            key_slots = mask = None
            if context_len:
                key_slots = to_device(token_slots(table_flat, table_offsets[i:i + 1], np.zeros(1, np.int64),
                                                  context_lens[i:i + 1] + query_len, block_size)[0])
                key_pos = torch.arange(context_len + query_len, device=device)
                query_pos = torch.arange(query_len, device=device).unsqueeze(1) + context_len
                mask = key_pos <= query_pos
            prefills.append(PrefillChunk(query_start, query_start + query_len, key_slots, mask))
            query_start += query_len

        return CpuAttentionMetadata(
            slot_mapping=to_device(slots),
            num_decodes=num_decodes,
            decode_key_slots=to_device(decode_slots),
            decode_key_segments=to_device(decode_segments),
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

        outputs = []
        num_decodes = meta.num_decodes
        if num_decodes == 1:
            outputs.append(self._decode_one(q[:1], cache, meta.decode_key_slots))
        elif num_decodes > 1:
            outputs.append(self._decode_batch(q[:num_decodes], cache, meta))
        for chunk in meta.prefills:
            outputs.append(self._prefill(q, k, v, cache, chunk))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _decode_one(self, q: torch.Tensor, cache: torch.Tensor, key_slots: torch.Tensor) -> torch.Tensor:
        # The G query heads sharing a kv head act as G query rows of one attention call.
        kv = cache.index_select(1, key_slots).transpose(1, 2)  # [2, KV, L, D]
        queries = q.view(self.num_kv_heads, self.group, self.head_dim)  # [KV, G, D]
        out = F.scaled_dot_product_attention(queries, kv[0], kv[1], scale=self.scale)  # [KV, G, D]
        return out.view(1, self.num_heads, self.head_dim)

    def _decode_batch(self, q: torch.Tensor, cache: torch.Tensor, meta: CpuAttentionMetadata) -> torch.Tensor:
        num_decodes, segments = q.shape[0], meta.decode_key_segments
        kv = cache.index_select(1, meta.decode_key_slots)  # [2, K, KV, D], K = keys of all decodes
        queries = (q * self.scale).view(num_decodes, self.num_kv_heads, self.group, self.head_dim)
        query_per_key = queries.index_select(0, segments)  # [K, KV, G, D]
        scores = torch.matmul(query_per_key, kv[0].unsqueeze(-1)).squeeze(-1)  # [K, KV, G]

        # Segment softmax: max and sum per decode request over its own keys only.
        per_request = (num_decodes, self.num_kv_heads, self.group)
        segment_index = segments.view(-1, 1, 1).expand_as(scores)
        seg_max = scores.new_full(per_request, -torch.inf).scatter_reduce_(0, segment_index, scores, "amax")
        weights = (scores - seg_max.index_select(0, segments)).exp_()  # [K, KV, G]
        seg_sum = scores.new_zeros(per_request).index_add_(0, segments, weights)
        weighted_values = weights.unsqueeze(-1) * kv[1].unsqueeze(2)  # [K, KV, G, D]
        out = q.new_zeros(*per_request, self.head_dim).index_add_(0, segments, weighted_values)
        return (out / seg_sum.unsqueeze(-1)).view(num_decodes, self.num_heads, self.head_dim)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor,
                 chunk: PrefillChunk) -> torch.Tensor:
        rows = slice(chunk.query_start, chunk.query_end)
        queries = q[rows].transpose(0, 1)  # [H, Lq, D]
        if chunk.key_slots is None:
            out = F.scaled_dot_product_attention(queries, k[rows].transpose(0, 1), v[rows].transpose(0, 1),
                                                 is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            kv = cache.index_select(1, chunk.key_slots).transpose(1, 2)  # [2, KV, Lk, D]
            out = F.scaled_dot_product_attention(queries, kv[0], kv[1], attn_mask=chunk.mask,
                                                 scale=self.scale, enable_gqa=True)
        return out.transpose(0, 1)  # [Lq, H, D]
