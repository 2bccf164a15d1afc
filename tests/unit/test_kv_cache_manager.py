"""KVCacheManager: block accounting, all-or-nothing allocation, prefix caching."""

from __future__ import annotations

import pytest

from engine_core.kv_cache_manager import KVCacheManager

pytestmark = pytest.mark.unit

BLOCK = 4


def source(token_ids: list[int]):
    return lambda start, end: token_ids[start:end]


def test_num_blocks_needed_rounds_up() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK)
    assert [kv.num_blocks_needed(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_table_grows_only_when_a_block_fills() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK)
    assert kv.allocate_slots("a", 3)
    first = kv.block_table("a")
    assert len(first) == 1 and kv.num_free_blocks == 7
    assert kv.allocate_slots("a", 4)
    assert kv.block_table("a") == first
    assert kv.allocate_slots("a", 5)
    table = kv.block_table("a")
    assert table[:1] == first and len(table) == 2 and kv.num_free_blocks == 6
    assert len(set(table)) == 2 and all(0 <= b < 8 for b in table)


def test_allocation_is_all_or_nothing() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK)
    assert kv.allocate_slots("a", 2 * BLOCK)
    assert not kv.allocate_slots("b", 3 * BLOCK)
    assert kv.block_table("b") == [] and kv.num_free_blocks == 2
    assert not kv.allocate_slots("a", 5 * BLOCK)
    assert len(kv.block_table("a")) == 2 and kv.num_free_blocks == 2
    assert kv.allocate_slots("b", 2 * BLOCK)
    assert kv.num_free_blocks == 0
    assert set(kv.block_table("a")).isdisjoint(kv.block_table("b"))


def test_free_returns_every_block_and_is_idempotent() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=BLOCK)
    kv.allocate_slots("a", 9)
    kv.allocate_slots("b", 5)
    kv.free("a")
    kv.free("a")
    kv.free("never-seen")
    assert kv.num_free_blocks == 4 and kv.block_table("a") == []
    kv.free("b")
    assert kv.num_free_blocks == kv.num_total_blocks == 6
    assert kv.allocate_slots("c", 6 * BLOCK)  # the whole pool is usable again


def test_block_table_is_a_snapshot() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK)
    kv.allocate_slots("a", 1)
    snapshot = kv.block_table("a")
    kv.allocate_slots("a", 2 * BLOCK)
    assert len(snapshot) == 1 and len(kv.block_table("a")) == 2


def test_without_prefix_caching_nothing_is_shared() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK)
    tokens = list(range(3 * BLOCK))
    kv.allocate_slots("a", len(tokens), source(tokens))
    assert kv.match_prefix("b", len(tokens), source(tokens)) == 0
    assert kv.block_table("b") == []
    assert kv.prefix_cache_hits == kv.prefix_cache_queries == 0


def test_prefix_hit_shares_full_blocks_and_leaves_a_token_to_compute() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    tokens = list(range(100, 100 + 3 * BLOCK))  # exactly 3 full blocks
    assert kv.allocate_slots("a", len(tokens), source(tokens))
    # The last token must be computed to sample, so the third block is not a hit.
    assert kv.match_prefix("b", len(tokens), source(tokens)) == 2 * BLOCK
    assert kv.block_table("b") == kv.block_table("a")[:2]
    assert kv.allocate_slots("b", len(tokens), source(tokens))
    assert kv.block_table("b")[2] != kv.block_table("a")[2]
    assert kv.num_free_blocks == 8 - 4
    assert kv.prefix_cache_hits == 2 * BLOCK and kv.prefix_cache_queries == len(tokens)
    kv.free("a")
    assert kv.num_free_blocks == 8 - 3  # a's first two blocks are still held by b
    kv.free("b")
    assert kv.num_free_blocks == 8


def test_prefix_chain_depends_on_all_earlier_blocks() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    a = [1] * BLOCK + [2] * BLOCK + [3]
    b = [9] * BLOCK + [2] * BLOCK + [3]  # same second block after a different first one
    kv.allocate_slots("a", len(a), source(a))
    assert kv.match_prefix("b", len(b), source(b)) == 0
    c = [1] * BLOCK + [7] * BLOCK + [3]
    assert kv.match_prefix("c", len(c), source(c)) == BLOCK


def test_freed_cached_blocks_are_found_until_evicted_lru() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=True)
    old = [1] * BLOCK + [2] * BLOCK + [0]
    new = [5] * BLOCK + [6] * BLOCK + [0]
    kv.allocate_slots("old", 2 * BLOCK, source(old))
    kv.free("old")
    kv.allocate_slots("new", 2 * BLOCK, source(new))
    kv.free("new")
    assert kv.num_free_blocks == 4  # cached blocks still count as free
    # Taking 2 blocks must evict the least recently freed request's blocks.
    kv.allocate_slots("filler", 2 * BLOCK, source([0] * 2 * BLOCK))
    assert kv.match_prefix("probe-new", len(new), source(new)) == 2 * BLOCK
    assert kv.match_prefix("probe-old", len(old), source(old)) == 0


def test_uncached_blocks_are_reused_before_cached_ones() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=True)
    cached = [3] * BLOCK + [4] * BLOCK + [0]
    kv.allocate_slots("cached", 2 * BLOCK, source(cached))
    kv.allocate_slots("partial", 2, source([8, 8]))  # one partly filled block: not cached
    kv.free("cached")
    kv.free("partial")
    # Two blocks: the partial one and the never used one, not the cached pair.
    kv.allocate_slots("next", 2 * BLOCK - 1, source([7] * (2 * BLOCK - 1)))
    assert kv.match_prefix("probe", len(cached), source(cached)) == 2 * BLOCK


def test_prefix_caching_requires_tokens() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=True)
    with pytest.raises(ValueError):
        kv.allocate_slots("a", BLOCK)


def test_match_prefix_then_free_undoes_the_hits() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=True)
    tokens = [1] * (2 * BLOCK) + [2]
    kv.allocate_slots("a", len(tokens), source(tokens))
    kv.free("a")
    assert kv.match_prefix("b", len(tokens), source(tokens)) == 2 * BLOCK
    assert kv.num_free_blocks == 2
    kv.free("b")
    assert kv.num_free_blocks == 4
    assert kv.match_prefix("c", len(tokens), source(tokens)) == 2 * BLOCK


def test_a_freed_requests_last_block_is_evicted_before_its_first() -> None:
    kv = KVCacheManager(num_blocks=2, block_size=BLOCK, enable_prefix_caching=True)
    tokens = [1] * BLOCK + [2] * BLOCK + [3]
    kv.allocate_slots("a", 2 * BLOCK, source(tokens))
    kv.free("a")
    kv.allocate_slots("b", 1, source([9]))
    assert kv.match_prefix("probe", len(tokens), source(tokens)) == BLOCK
