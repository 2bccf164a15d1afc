"""Paged attention on the CPU with torch ops.

``prepare`` turns the step's ``BatchLayout`` into index tensors once; every layer's
``forward`` then only writes its new K/V into the cache and attends:

* decodes (one query each) are computed together, split-K style, with a fixed number
  of torch ops whatever the batch: each decode request's cache blocks are grouped into
  chunks of C keys (the last chunk padded with zeroed, masked keys; never a whole
  padding chunk, and no padding to the longest request). One ``index_select`` gathers
  the whole blocks of K and V of all chunks, one bmm scores every chunk against its
  request's query, one bmm weights the values, and a segment softmax (per-request max,
  ``index_add`` of the sums) combines the chunks of each request;
* prefill chunks (few per step) each run one ``scaled_dot_product_attention`` over the
  gathered earlier context plus the chunk's own tokens.

GQA in the decode bmms: keys stay ``[C, KV * D]`` rows exactly as the cache stores them
(no transposing copy, no repeat per query head); each query head is instead spread into a
``KV * D`` row that is zero outside its own kv head (``head_mask``). That does KV times
the multiply-adds of a per-head bmm, which is cheap next to moving the keys around.
Prefill keys are gathered with ``F.embedding`` on the cache seen as a ``[slots, KV * D]``
table: on CPU it is several times faster than ``index_select`` on the slot dimension.
Shapes: T new tokens, H query heads, KV key/value heads, G = H // KV, D head dim,
R decode requests, N decode chunks, C keys per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kernels.attention.base import AttentionBackend, AttentionMetadata, BatchLayout

DECODE_CHUNK = 64  # target keys per decode chunk (rounded to whole blocks): few bmm batches, small padding


@dataclass(frozen=True)
class PrefillChunk:
    query_start: int  # first row of this request's queries in the step's [T] layout
    query_end: int
    # Cache slots of context + new tokens and the causal mask offset by the context
    # length; both None when there is no earlier context (plain causal over the chunk).
    key_slots: torch.Tensor | None  # [context + query_len] int64
    mask: torch.Tensor | None  # [query_len, context + query_len] bool, True = attend


@dataclass(frozen=True)
class DecodeChunks:
    """Where the keys of the step's decode requests are and how their chunks combine."""

    block_ids: torch.Tensor  # [N * C / block_size] int64: cache blocks of every chunk, in order
    padding_rows: torch.Tensor  # [P] int64: gathered key rows past their request's length
    mask: torch.Tensor  # [N, 1, C] float32: 0 for real keys, -inf for the padding
    chunk_request: torch.Tensor  # [N] int64: decode request owning each chunk
    chunk_request_index: torch.Tensor  # [N, H] the same, expanded for scatter_reduce
    chunk_size: int


@dataclass(frozen=True)
class CpuAttentionMetadata(AttentionMetadata):
    slot_mapping: torch.Tensor  # [T] int64
    num_decodes: int  # decodes computed together (0 when there is a single one: see prepare)
    decodes: DecodeChunks | None  # None when num_decodes is 0
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
        # head_mask[h, kv] = scale where query head h reads kv head kv, else 0: spreads a
        # query head into a [KV * D] row and applies the softmax scale in the same multiply.
        head_kv = torch.arange(num_heads) // self.group
        self.head_mask = (head_kv.unsqueeze(1) == torch.arange(num_kv_heads)).float().mul_(scale)
        self.head_mask = self.head_mask.unsqueeze(-1)  # [H, KV, 1]

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
        # A lone decode is cheapest as one SDPA call over its keys, like a one-token prefill.
        batched_decodes = num_decodes if num_decodes > 1 else 0
        prefills = []
        query_start = batched_decodes
        for i in range(batched_decodes, len(query_lens)):
            query_len, context_len = int(query_lens[i]), int(context_lens[i])
            key_slots = mask = None
            if context_len:
                key_lens = context_lens[i:i + 1] + query_len
                key_slots = to_device(slots_in_range(i, np.zeros(1, np.int64), key_lens))
                key_pos = torch.arange(context_len + query_len, device=device)
                mask = key_pos <= torch.arange(query_len, device=device).unsqueeze(1) + context_len
            prefills.append(PrefillChunk(query_start, query_start + query_len, key_slots, mask))
            query_start += query_len

        decodes = None
        if batched_decodes:
            decodes = self._prepare_decodes(context_lens[:batched_decodes] + 1, table_flat, table_offsets,
                                            table_lens, block_size, to_device)
        return CpuAttentionMetadata(
            slot_mapping=to_device(slot_mapping),
            num_decodes=batched_decodes,
            decodes=decodes,
            prefills=tuple(prefills),
        )

    def _prepare_decodes(self, key_lens: np.ndarray, table_flat: np.ndarray, table_offsets: np.ndarray,
                         table_lens: np.ndarray, block_size: int, to_device) -> DecodeChunks:
        """key_lens: [R] keys per decode request (context + the new token)."""
        blocks_per_chunk = max(1, DECODE_CHUNK // block_size)
        chunk_size = blocks_per_chunk * block_size
        chunks_per_request = -(-key_lens // chunk_size)
        padded_lens = chunks_per_request * chunk_size
        requests, block_index = token_ranges(np.zeros_like(key_lens), chunks_per_request * blocks_per_chunk)
        # Blocks past the end of a block table repeat its last block: any real block will
        # do, their rows are zeroed and masked anyway.
        block_index = np.minimum(block_index, table_lens[requests] - 1)
        block_ids = table_flat[table_offsets[requests] + block_index]

        # Padding rows hold stale (even NaN) cache contents: they are zeroed after the gather
        # because a masked score still multiplies its value row (0 * NaN = NaN).
        request_first_row = np.cumsum(padded_lens) - padded_lens
        _, padding_rows = token_ranges(request_first_row + key_lens, padded_lens - key_lens)
        is_padding = np.zeros(int(padded_lens.sum()), dtype=bool)
        is_padding[padding_rows] = True
        mask = torch.zeros(is_padding.shape).masked_fill_(torch.from_numpy(is_padding), float("-inf"))

        chunk_request = to_device(np.repeat(np.arange(len(key_lens)), chunks_per_request))
        return DecodeChunks(
            block_ids=to_device(block_ids),
            padding_rows=to_device(padding_rows),
            mask=mask.to(chunk_request.device).view(-1, 1, chunk_size),
            chunk_request=chunk_request,
            chunk_request_index=chunk_request.unsqueeze(1).expand(-1, self.num_heads),
            chunk_size=chunk_size,
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
        if meta.decodes is not None:
            outputs.append(self._decode(q[:meta.num_decodes], kv_cache, meta.decodes))
        if meta.prefills:
            key_table, value_table = kv_cache.view(2, cache.shape[1], -1)  # [slots, KV * D] each
            for chunk in meta.prefills:
                outputs.append(self._prefill(q, k, v, key_table, value_table, chunk))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _gather(self, table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return F.embedding(slots, table).view(*slots.shape, self.num_kv_heads, self.head_dim)

    def _gather_chunks(self, kv_cache: torch.Tensor, chunks: DecodeChunks) -> torch.Tensor:
        # Whole blocks by block id, K and V into one buffer: rows of block_size * KV * D values
        # copy ~3x faster than one row per slot, and index_select on dim 0 (not 1) is the
        # fast CPU path.
        tables = kv_cache.view(2, kv_cache.shape[1], -1)  # [2, num_blocks, bs * KV * D]
        blocks = tables.new_empty(2, chunks.block_ids.shape[0], tables.shape[-1])
        for kind in range(2):
            torch.index_select(tables[kind], 0, chunks.block_ids, out=blocks[kind])
            blocks[kind].view(-1, self.num_kv_heads * self.head_dim).index_fill_(0, chunks.padding_rows, 0.0)
        return blocks.view(2, -1, chunks.chunk_size, self.num_kv_heads * self.head_dim)  # [2, N, C, KV * D]

    def _decode(self, q: torch.Tensor, kv_cache: torch.Tensor, chunks: DecodeChunks) -> torch.Tensor:
        # float32 math whatever the cache dtype: CPUs without native bf16 run bf16 bmm
        # several times slower than the upcast, and the softmax sums want the precision.
        out_dtype, q = q.dtype, q.float()
        num_decodes, heads = q.shape[0], self.num_heads
        keys, values = self._gather_chunks(kv_cache, chunks).float()  # [N, C, KV * D] each
        # Query head h spread over all kv heads, zero (and scaled) outside its own.
        spread = (q.unsqueeze(2) * self.head_mask.to(q.dtype)).view(num_decodes, heads, -1)  # [R, H, KV*D]
        queries = spread.index_select(0, chunks.chunk_request)  # [N, H, KV * D]
        scores = torch.baddbmm(chunks.mask.to(q.dtype), queries, keys.transpose(1, 2))  # [N, H, C]

        # Softmax over all chunks of a request: shift by the request's max, sum per request.
        chunk_max = scores.amax(dim=-1)  # [N, H]; finite: a chunk always has a real key
        request_max = chunk_max.new_empty(num_decodes, heads).scatter_reduce_(
            0, chunks.chunk_request_index, chunk_max, "amax", include_self=False)
        shift = request_max.index_select(0, chunks.chunk_request).unsqueeze(-1)  # [N, H, 1]
        probs = scores.sub_(shift).exp_()  # [N, H, C], unnormalised
        total = probs.new_zeros(num_decodes, heads).index_add_(0, chunks.chunk_request, probs.sum(-1))
        weighted = torch.bmm(probs, values)  # [N, H, KV * D]: every head against every kv head
        out = weighted.new_zeros(num_decodes, heads, weighted.shape[-1]).index_add_(
            0, chunks.chunk_request, weighted)
        # Keep each head's own kv head: [R, KV, G, KV, D] -> diagonal over the two KV dims.
        out = out.view(num_decodes, self.num_kv_heads, self.group, self.num_kv_heads, self.head_dim)
        out = torch.diagonal(out, dim1=1, dim2=3).permute(0, 3, 1, 2)  # [R, KV, G, D]
        return (out.reshape(num_decodes, heads, self.head_dim) / total.unsqueeze(-1)).to(out_dtype)

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
