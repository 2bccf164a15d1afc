"""Paged KV cache bookkeeping: which blocks each request owns. Torch-free.

The cache tensors live in the model runner; this module only hands out block
ids. Every block id in ``range(num_blocks)`` is usable (no null block is reserved).

Blocks are reference counted so that, with prefix caching, requests sharing a
prompt prefix share its full blocks. A block whose count drops to zero goes back
to the free queue; if it holds a cached full block it stays findable there until
it is reused (LRU eviction). Without prefix caching every count is 0 or 1 and the
strategy object below does nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

TokenSource = Callable[[int, int], list[int]]
"""Gives a request's token ids ``[start, end)``; ``Request.token_ids`` is one."""


class BlockPool:
    """Reference counts plus a free queue ordered by reuse priority (front first)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        # An OrderedDict so a cached block can leave the middle of the queue on a prefix hit.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take_free(self) -> int:
        block, _ = self._free.popitem(last=False)
        self.ref_counts[block] = 1
        return block

    def acquire(self, block: int) -> None:
        """One more user of ``block``, which may be sitting in the free queue."""
        if self.ref_counts[block] == 0:
            del self._free[block]
        self.ref_counts[block] += 1

    def release(self, block: int, keep_cached: bool) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] > 0:
            return
        self._free[block] = None
        if not keep_cached:
            # Nothing worth keeping in it: reuse it before any cached block.
            self._free.move_to_end(block, last=False)


class NoPrefixCache:
    """Null strategy: nothing is ever found, nothing is remembered."""

    hits = 0
    queries = 0

    def match(self, request_id: str, num_tokens: int, tokens: TokenSource) -> list[int]:
        return []

    def cache_full_blocks(
        self, request_id: str, table: list[int], num_tokens: int, tokens: TokenSource | None
    ) -> None:
        pass

    def is_cached(self, block: int) -> bool:
        return False

    def evict(self, block: int) -> None:
        pass

    def forget_request(self, request_id: str) -> None:
        pass


class PrefixCache:
    """Finds full blocks by the hash of their tokens chained with the previous block's hash.

    A block is registered as soon as it is allocated for tokens that fill it: its
    K/V is written in the step it is scheduled, before any attention of that step
    reads the cache, so a request admitted later in the same step may already share it.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._block_by_hash: dict[int, int] = {}
        self._hash_by_block: dict[int, int] = {}
        self._chains: dict[str, list[int]] = {}  # hashes of each request's full blocks, in order
        self.hits = 0  # tokens found in the cache
        self.queries = 0  # tokens looked up

    def _block_hash(self, parent: int | None, index: int, tokens: TokenSource) -> int:
        start = index * self.block_size
        return hash((parent, tuple(tokens(start, start + self.block_size))))

    def match(self, request_id: str, num_tokens: int, tokens: TokenSource) -> list[int]:
        """Blocks holding the longest cached prefix. At least one token is left to
        compute, because the last one must run through the model to be sampled from."""
        chain: list[int] = []
        blocks: list[int] = []
        for index in range((num_tokens - 1) // self.block_size):
            block_hash = self._block_hash(chain[-1] if chain else None, index, tokens)
            block = self._block_by_hash.get(block_hash)
            if block is None:
                break
            chain.append(block_hash)
            blocks.append(block)
        self._chains[request_id] = chain
        self.queries += num_tokens
        self.hits += len(blocks) * self.block_size
        return blocks

    def cache_full_blocks(
        self, request_id: str, table: list[int], num_tokens: int, tokens: TokenSource | None
    ) -> None:
        if tokens is None:
            raise ValueError("prefix caching needs the request's tokens to hash its blocks")
        chain = self._chains.setdefault(request_id, [])
        for index in range(len(chain), num_tokens // self.block_size):
            block_hash = self._block_hash(chain[-1] if chain else None, index, tokens)
            chain.append(block_hash)
            # Identical content computed twice (both requests missed) stays cached once;
            # the duplicate block is simply not findable.
            if block_hash not in self._block_by_hash:
                self._block_by_hash[block_hash] = table[index]
                self._hash_by_block[table[index]] = block_hash

    def is_cached(self, block: int) -> bool:
        return block in self._hash_by_block

    def evict(self, block: int) -> None:
        block_hash = self._hash_by_block.pop(block, None)
        if block_hash is not None:
            del self._block_by_hash[block_hash]

    def forget_request(self, request_id: str) -> None:
        self._chains.pop(request_id, None)


class KVCacheManager:
    """Block tables keyed by request id, over a pool of ``num_blocks`` blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need positive num_blocks and block_size, got {num_blocks}, {block_size}")
        self.block_size = block_size
        self._pool = BlockPool(num_blocks)
        self._prefix_cache = PrefixCache(block_size) if enable_prefix_caching else NoPrefixCache()
        self._tables: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation can take, cached-but-unused ones included."""
        return self._pool.num_free

    @property
    def num_total_blocks(self) -> int:
        return self._pool.num_blocks

    @property
    def prefix_cache_hits(self) -> int:
        return self._prefix_cache.hits

    @property
    def prefix_cache_queries(self) -> int:
        return self._prefix_cache.queries

    def num_blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> list[int]:
        """A copy: the caller may keep it while the table grows."""
        return list(self._tables.get(request_id, ()))

    def match_prefix(self, request_id: str, num_tokens: int, tokens: TokenSource) -> int:
        """Start a request's table with the cached blocks of its longest known prefix.

        Returns how many tokens need no computing (a multiple of ``block_size``, below
        ``num_tokens``); always 0 without prefix caching. Undo with ``free``.
        """
        if self._tables.get(request_id):
            raise ValueError(f"request {request_id!r} already holds blocks")
        blocks = self._prefix_cache.match(request_id, num_tokens, tokens)
        for block in blocks:
            self._pool.acquire(block)
        self._tables[request_id] = blocks
        return len(blocks) * self.block_size

    def allocate_slots(self, request_id: str, num_tokens: int, tokens: TokenSource | None = None) -> bool:
        """Grow the request's table to cover ``num_tokens`` tokens in all.

        All or nothing: on a shortage nothing is allocated and False is returned.
        ``tokens`` is needed with prefix caching (to hash the blocks this fills).
        """
        table = self._tables.get(request_id, [])
        num_new_blocks = self.num_blocks_needed(num_tokens) - len(table)
        if num_new_blocks > self._pool.num_free:
            return False
        for _ in range(num_new_blocks):
            block = self._pool.take_free()
            self._prefix_cache.evict(block)
            table.append(block)
        self._tables[request_id] = table
        self._prefix_cache.cache_full_blocks(request_id, table, num_tokens, tokens)
        return True

    def free(self, request_id: str) -> None:
        """Give back the request's blocks; unknown or already freed ids are ignored."""
        table = self._tables.pop(request_id, None)
        self._prefix_cache.forget_request(request_id)
        if table is None:
            return
        # Tail first: a request's last blocks are the least likely to be shared,
        # so they sit nearer the front of the queue and get evicted first.
        for block in reversed(table):
            self._pool.release(block, keep_cached=self._prefix_cache.is_cached(block))
