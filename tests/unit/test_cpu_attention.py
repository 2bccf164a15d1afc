"""The CPU paged-attention backend against dense per-request attention."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import get_attention_backend
from kernels.attention.cpu import CpuAttentionBackend
from tests.model.helpers import PagedRequests, make_kv_caches

pytestmark = pytest.mark.unit

HEAD_DIM = 16
BLOCK_SIZE = 4
NUM_BLOCKS = 128

SCENARIOS = {
    "prefills_only": [[("a", 5), ("b", 17), ("c", 1)]],
    "single_decode": [[("a", 6)], [("a", 1)], [("a", 1)]],
    "decodes_only": [[("a", 3), ("b", 20), ("c", 9)], [("a", 1), ("b", 1), ("c", 1)],
                     [("a", 1), ("b", 1), ("c", 1)]],
    "mixed": [[("a", 4), ("b", 7)], [("a", 1), ("b", 1), ("c", 6)],
              [("a", 1), ("b", 1), ("c", 1), ("d", 9)]],
    # Decode keys span several split-K chunks (DECODE_CHUNK = 64), some exactly full.
    "long_decodes": [[("a", 150), ("b", 3), ("c", 63)], [("a", 1), ("b", 1), ("c", 1)],
                     [("c", 1), ("a", 1), ("b", 1)]],
    "chunked_prefill": [[("a", 5)], [("a", 7)], [("b", 3), ("c", 2)],
                        [("a", 1), ("b", 6), ("c", 11)], [("c", 1), ("a", 1), ("b", 1)]],
}


def dense_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, first_position: int,
                    scale: float) -> torch.Tensor:
    """q: [n, H, D] at positions first_position.., keys/values: [L, KV, D] for positions 0..L-1."""
    group = q.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, keys) * scale
    query_pos = torch.arange(first_position, first_position + q.shape[0]).view(1, -1, 1)
    scores = scores.masked_fill(torch.arange(keys.shape[0]).view(1, 1, -1) > query_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matches_dense_reference(scenario: str, num_heads: int, num_kv_heads: int) -> None:
    torch.manual_seed(0)
    scale = HEAD_DIM ** -0.5
    backend = CpuAttentionBackend(num_heads, num_kv_heads, HEAD_DIM, scale)
    (kv_cache,) = make_kv_caches(1, NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, HEAD_DIM)
    requests = PagedRequests(NUM_BLOCKS, BLOCK_SIZE, seed=1)
    history: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    for schedule in SCENARIOS[scenario]:
        step = requests.step(schedule)
        num_tokens = step.layout.num_tokens
        q = torch.randn(num_tokens, num_heads, HEAD_DIM)
        k = torch.randn(num_tokens, num_kv_heads, HEAD_DIM)
        v = torch.randn(num_tokens, num_kv_heads, HEAD_DIM)

        out = backend.forward(q, k, v, kv_cache, backend.prepare(step.layout, torch.device("cpu")))

        assert out.shape == (num_tokens, num_heads, HEAD_DIM)
        row = 0
        for request_id, (start, end) in zip(step.request_ids, step.token_ranges, strict=True):
            rows = slice(row, row + end - start)
            old_k, old_v = history.get(request_id, (k[:0], v[:0]))
            history[request_id] = (torch.cat([old_k, k[rows]]), torch.cat([old_v, v[rows]]))
            expected = dense_attention(q[rows], *history[request_id], start, scale)
            torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)
            row = rows.stop


def test_new_tokens_land_in_their_block_table_slots() -> None:
    backend = CpuAttentionBackend(2, 1, HEAD_DIM, 1.0)
    (kv_cache,) = make_kv_caches(1, NUM_BLOCKS, BLOCK_SIZE, 1, HEAD_DIM)
    requests = PagedRequests(NUM_BLOCKS, BLOCK_SIZE, seed=2)
    requests.step([("a", 6)])
    step = requests.step([("a", 1), ("b", 3)])  # a's token 6, b's tokens 0..2
    k, v = torch.randn(4, 1, HEAD_DIM), torch.randn(4, 1, HEAD_DIM)
    meta = backend.prepare(step.layout, torch.device("cpu"))
    backend.forward(torch.randn(4, 2, HEAD_DIM), k, v, kv_cache, meta)

    table_a, table_b = step.layout.block_tables
    written = [(table_a[6 // BLOCK_SIZE], 6 % BLOCK_SIZE)] + [(table_b[0], t) for t in range(3)]
    for row, (block, offset) in enumerate(written):
        torch.testing.assert_close(kv_cache[0, block, offset], k[row], rtol=0, atol=0)
        torch.testing.assert_close(kv_cache[1, block, offset], v[row], rtol=0, atol=0)
    assert torch.isnan(kv_cache[0, table_b[0], 3]).all()  # the slot after b's last token is untouched


def test_backend_selection_and_validation() -> None:
    assert get_attention_backend(torch.device("cpu")) is CpuAttentionBackend
    with pytest.raises(NotImplementedError):
        get_attention_backend(torch.device("cuda"))
    with pytest.raises(ValueError, match="multiple"):
        CpuAttentionBackend(6, 4, HEAD_DIM, 1.0)
