"""Turns a SchedulerOutput into one forward pass over the ragged batch and samples."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch

from engine_core.config import CacheConfig, ModelConfig
from engine_core.models.loader import load_model
from engine_core.request import Request
from engine_core.sampler import Sampler, SamplerOutput, SamplingBatch
from engine_core.scheduler import SchedulerOutput
from kernels.attention import get_attention_backend
from kernels.attention.base import BatchLayout

logger = logging.getLogger(__name__)

_GiB = 1 << 30
_DEFAULT_KV_CAP_GIB = 4.0


@dataclass(frozen=True)
class KVCacheShape:
    num_blocks: int
    block_size: int
    max_model_len: int


class ModelRunner:
    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig) -> None:
        self.device = torch.device(model_config.device)
        torch.manual_seed(model_config.seed)
        backend_cls = get_attention_backend(self.device)
        self.model, self.arch = load_model(model_config, backend_cls, self.device)
        self.dtype = next(self.model.parameters()).dtype
        self.attn = self.model.attn_backend
        self.kv_shape = self._plan_kv_cache(model_config, cache_config)
        self.kv_caches = self._allocate_kv_caches()
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}

    # -- set-up -----------------------------------------------------------------

    def _kv_bytes_per_token(self) -> int:
        per_layer = 2 * self.arch.num_kv_heads * self.arch.head_dim * self.dtype.itemsize
        return per_layer * self.arch.num_layers

    def _plan_kv_cache(self, model_config: ModelConfig, cache_config: CacheConfig) -> KVCacheShape:
        budget_gib = cache_config.kv_cache_memory
        if budget_gib <= 0:
            budget_gib = min(_DEFAULT_KV_CAP_GIB, psutil.virtual_memory().available / 4 / _GiB)
        block_size = cache_config.block_size
        num_blocks = int(budget_gib * _GiB) // (self._kv_bytes_per_token() * block_size)
        if num_blocks < 2:
            raise ValueError(f"--kv-cache-memory {budget_gib} GiB holds fewer than 2 blocks")
        capacity = num_blocks * block_size
        max_len = model_config.max_model_len or self.arch.max_position_embeddings
        if max_len > capacity:
            logger.warning("max_model_len %d exceeds the KV cache (%d tokens): capped", max_len, capacity)
            max_len = capacity
        logger.info("KV cache: %d blocks of %d tokens (%.2f GiB), max_model_len %d",
                    num_blocks, block_size, budget_gib, max_len)
        return KVCacheShape(num_blocks, block_size, max_len)

    def _allocate_kv_caches(self) -> list[torch.Tensor]:
        shape = (2, self.kv_shape.num_blocks, self.kv_shape.block_size,
                 self.arch.num_kv_heads, self.arch.head_dim)
        # zeros: pages are only touched (and become resident) when a block is used.
        return [torch.zeros(shape, dtype=self.dtype, device=self.device)
                for _ in range(self.arch.num_layers)]

    # -- per step -----------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        if request.sampling.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(request.sampling.seed)
            self.generators[request.request_id] = generator

    def remove_request(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> SamplerOutput | None:
        """One forward pass for every scheduled chunk; samples the chunks that
        reach the end of their request. None when nothing samples."""
        if not plan.scheduled:
            return None
        input_ids, positions, layout, sample_rows, samplers = self._prepare_inputs(plan)
        meta = self.attn.prepare(layout, self.device)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        if not sample_rows:
            return None
        logits = self.model.compute_logits(hidden[sample_rows])
        generators = [self.generators.get(r.request_id) for r in samplers]
        batch = SamplingBatch.build(samplers, generators, self.arch.vocab_size)
        return self.sampler(logits, batch)

    def _prepare_inputs(self, plan: SchedulerOutput):
        token_ids: list[int] = []
        positions: list[int] = []
        sample_rows: list[int] = []
        samplers: list[Request] = []
        query_lens, context_lens, block_tables = [], [], []
        for chunk in plan.scheduled:
            req = chunk.request
            start = req.num_computed_tokens
            end = start + chunk.num_new_tokens
            token_ids.extend(req.token_ids(start, end))
            positions.extend(range(start, end))
            query_lens.append(chunk.num_new_tokens)
            context_lens.append(start)
            block_tables.append(chunk.block_table)
            if chunk.samples:
                sample_rows.append(len(token_ids) - 1)
                samplers.append(req)
        layout = BatchLayout(query_lens, context_lens, block_tables, plan.num_decodes,
                             self.kv_shape.block_size)
        return (torch.tensor(token_ids, device=self.device),
                torch.tensor(positions, device=self.device),
                layout, sample_rows, samplers)
