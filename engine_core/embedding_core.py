"""EmbeddingCore: the engine core of ``--task embedding``.

Same surface as ``EngineCore`` (add / abort / has_work / step / stats), much less inside:
an embedding is done in one forward pass, so there is no KV cache, no decode and no
preemption. Each step takes waiting requests first come, first served under the token and
sequence budgets, runs them as one flat varlen batch and pools one vector per request.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque

import torch

from engine_core.config import EngineConfig
from engine_core.messages.engine_input import EmbedRequest
from engine_core.messages.engine_output import EmbeddingResult, EmbeddingResults, EngineStats
from engine_core.models.bert import BertConfig
from engine_core.models.embedding_loader import load_embedding_model
from engine_core.models.pooling import Pooler

logger = logging.getLogger(__name__)

_MIN_BATCHED_TOKENS = 2048  # the default budget when the flag is 0, as for generation


def embedding_max_len(path: str, config: BertConfig, requested: int) -> int:
    """Longest input: sentence-transformers' ``max_seq_length`` (what the model was trained
    on) if the directory has one, else the position table's size; ``requested`` (the
    --max-model-len flag, 0 = unset) may lower it but not exceed the position table."""
    default = config.max_position_embeddings
    st_config_file = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(st_config_file):
        with open(st_config_file) as f:
            default = min(default, json.load(f).get("max_seq_length") or default)
    if requested > config.max_position_embeddings:
        raise ValueError(f"--max-model-len {requested} exceeds the model's "
                         f"{config.max_position_embeddings} position embeddings")
    return requested or default


class EmbeddingCore:
    def __init__(self, config: EngineConfig) -> None:
        path = config.model.resolved_path()
        self.device = torch.device(config.model.device)
        self.model, bert_config, pooling = load_embedding_model(path, config.model.dtype, self.device)
        self.pooler = Pooler(pooling)
        self.max_model_len = embedding_max_len(path, bert_config, config.model.max_model_len)
        self.max_num_seqs = config.scheduler.max_num_seqs
        self.max_num_batched_tokens = (config.scheduler.max_num_batched_tokens
                                       or max(self.max_model_len, _MIN_BATCHED_TOKENS))
        if self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(f"--max-num-batched-tokens {self.max_num_batched_tokens} is below the "
                             f"longest input ({self.max_model_len} tokens)")
        self.waiting: deque[EmbedRequest] = deque()
        self.rejected: list[EmbeddingResult] = []
        logger.info("embedding model %s: dim %d, %s pooling%s, max input %d tokens", path,
                    bert_config.hidden_size, pooling.mode, " + L2 norm" if pooling.normalize else "",
                    self.max_model_len)

    def add_request(self, msg: EmbedRequest) -> None:
        # The frontend refuses these with a 400 already; should one slip through, it gets an
        # empty embedding back (an error for the frontend) instead of stopping the engine.
        if not 0 < len(msg.prompt_token_ids) <= self.max_model_len:
            logger.error("request %s: %d tokens, expected 1..%d", msg.request_id,
                         len(msg.prompt_token_ids), self.max_model_len)
            self.rejected.append(EmbeddingResult(msg.request_id, [], len(msg.prompt_token_ids)))
            return
        self.waiting.append(msg)

    def abort_requests(self, request_ids: list[str]) -> None:
        # Only waiting requests can be aborted: a scheduled one finishes within its step.
        gone = set(request_ids)
        self.waiting = deque(r for r in self.waiting if r.request_id not in gone)

    def has_work(self) -> bool:
        return bool(self.waiting or self.rejected)

    def step(self) -> EmbeddingResults:
        batch = self._schedule()
        vectors = self._embed([r.prompt_token_ids for r in batch]) if batch else []
        results = [EmbeddingResult(r.request_id, v, len(r.prompt_token_ids))
                   for r, v in zip(batch, vectors, strict=True)]
        rejected, self.rejected = self.rejected, []
        return EmbeddingResults(rejected + results)

    def stats(self) -> EngineStats:
        return EngineStats(max_model_len=self.max_model_len, num_waiting=len(self.waiting))

    def _schedule(self) -> list[EmbedRequest]:
        """The longest FCFS prefix of the queue that fits both budgets (never empty: every
        request fits the token budget on its own, checked at construction and on arrival)."""
        batch: list[EmbedRequest] = []
        num_tokens = 0
        while self.waiting and len(batch) < self.max_num_seqs:
            n = len(self.waiting[0].prompt_token_ids)
            if batch and num_tokens + n > self.max_num_batched_tokens:
                break
            batch.append(self.waiting.popleft())
            num_tokens += n
        return batch

    @torch.inference_mode()
    def _embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        seq_lens = [len(ids) for ids in token_lists]
        input_ids = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.int64,
                                 device=self.device)
        positions = torch.cat([torch.arange(n, device=self.device) for n in seq_lens])
        hidden = self.model(input_ids, positions, seq_lens)  # [T, H]
        return self.pooler.pool(hidden, seq_lens).cpu().tolist()  # [B, H] float32
