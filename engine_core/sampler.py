"""Batched sampling on tensors: one set of ops for the whole batch, whatever each
request asked for. Per-row Python work is limited to building the parameter
tensors and drawing seeded noise (one generator per seeded request)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine_core.request import Request


@dataclass
class SamplingBatch:
    """Per-row sampling parameters of one step, built from the requests that sample."""

    temperature: torch.Tensor  # [N] float32, 0 for greedy rows
    top_p: torch.Tensor | None  # [N] or None when no row uses it
    top_k: torch.Tensor | None  # [N] int64, vocab size for rows without top-k
    min_p: torch.Tensor | None  # [N]
    generators: list[torch.Generator | None]  # per row; None uses the engine's default
    all_greedy: bool
    num_logprobs: int  # most top logprobs any row asked for; -1 when no row wants logprobs
    penalties: PenaltyBatch | None
    banned: list[tuple[int, list[int]]]  # (row, token ids) masked until min_tokens is reached

    @classmethod
    def build(cls, requests: list[Request], generators: list[torch.Generator | None],
              vocab_size: int) -> SamplingBatch:
        params = [r.sampling for r in requests]
        top_k = [p.top_k if p.top_k > 0 else vocab_size for p in params]
        logprob_counts = [p.logprobs for p in params if p.logprobs is not None]
        penalized = any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
                        for p in params)
        return cls(
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float32),
            top_p=_optional([p.top_p for p in params], 1.0),
            top_k=torch.tensor(top_k) if min(top_k) < vocab_size else None,
            min_p=_optional([p.min_p for p in params], 0.0),
            generators=generators,
            all_greedy=all(p.greedy for p in params),
            num_logprobs=max(logprob_counts, default=-1),
            penalties=PenaltyBatch.build(requests, vocab_size) if penalized else None,
            banned=_banned_until_min_tokens(requests),
        )


def _optional(values: list[float], neutral: float) -> torch.Tensor | None:
    if all(v == neutral for v in values):
        return None
    return torch.tensor(values, dtype=torch.float32)


def _banned_until_min_tokens(requests: list[Request]) -> list[tuple[int, list[int]]]:
    banned = []
    for row, r in enumerate(requests):
        if len(r.output_token_ids) < r.sampling.min_tokens:
            stops = list(r.sampling.stop_token_ids)
            if r.eos_token_id is not None and not r.sampling.ignore_eos:
                stops.append(r.eos_token_id)
            banned.append((row, stops))
    return banned


@dataclass
class PenaltyBatch:
    """OpenAI presence/frequency penalties on output tokens and the
    multiplicative repetition penalty on prompt + output tokens."""

    output_counts: torch.Tensor  # [N, V] float32
    seen: torch.Tensor  # [N, V] bool: in prompt or output
    presence: torch.Tensor  # [N, 1]
    frequency: torch.Tensor  # [N, 1]
    repetition: torch.Tensor  # [N, 1]

    @classmethod
    def build(cls, requests: list[Request], vocab_size: int) -> PenaltyBatch:
        n = len(requests)
        counts = torch.zeros(n, vocab_size)
        seen = torch.zeros(n, vocab_size, dtype=torch.bool)
        for row, r in enumerate(requests):
            if r.output_token_ids:
                ids = torch.tensor(r.output_token_ids)
                counts[row].index_add_(0, ids, torch.ones(len(ids)))
            seen[row, torch.tensor(r.prompt_token_ids)] = True
        seen |= counts > 0
        column = lambda xs: torch.tensor(xs, dtype=torch.float32).unsqueeze(1)  # noqa: E731
        return cls(
            output_counts=counts, seen=seen,
            presence=column([r.sampling.presence_penalty for r in requests]),
            frequency=column([r.sampling.frequency_penalty for r in requests]),
            repetition=column([r.sampling.repetition_penalty for r in requests]),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rep = torch.where(self.seen, self.repetition, 1.0)
        logits = torch.where(logits > 0, logits / rep, logits * rep)
        logits = logits - self.frequency * self.output_counts
        return logits - self.presence * (self.output_counts > 0)


@dataclass
class SamplerOutput:
    token_ids: list[int]
    sampled_logprobs: list[float] | None  # None when no row asked for logprobs
    top_ids: list[list[int]] | None
    top_logprobs: list[list[float]] | None


class Sampler:
    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """logits: [N, V] float32 for the rows that sample this step."""
        raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.num_logprobs >= 0 else None
        if batch.penalties is not None:
            logits = batch.penalties.apply(logits)
        for row, token_ids in batch.banned:
            logits[row, token_ids] = float("-inf")
        if batch.all_greedy:
            sampled = logits.argmax(dim=-1)
        else:
            sampled = self._sample(logits, batch)
        return _with_logprobs(sampled, raw_logprobs, batch.num_logprobs)

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        greedy_ids = logits.argmax(dim=-1)
        is_greedy = batch.temperature == 0.0
        temperature = torch.where(is_greedy, 1.0, batch.temperature).unsqueeze(1)
        logits = logits / temperature
        if batch.top_k is not None or batch.top_p is not None:
            logits = _top_k_top_p(logits, batch.top_k, batch.top_p)
        probs = torch.softmax(logits, dim=-1)
        if batch.min_p is not None:
            threshold = batch.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < threshold, 0.0)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, and lets a
        # seeded request use its own generator for its own row only.
        noise = torch.empty_like(probs)
        for row, generator in enumerate(batch.generators):
            noise[row].exponential_(generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(is_greedy, greedy_ids, sampled)


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None,
                 top_p: torch.Tensor | None) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if top_k is not None:
        ranks = torch.arange(logits.shape[-1]).unsqueeze(0)
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # The first token is always kept: its preceding mass is 0.
        sorted_logits = sorted_logits.masked_fill(mass_before > top_p.unsqueeze(1), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, sorted_logits)


def _with_logprobs(sampled: torch.Tensor, raw_logprobs: torch.Tensor | None,
                   num_logprobs: int) -> SamplerOutput:
    token_ids = sampled.tolist()
    if raw_logprobs is None:
        return SamplerOutput(token_ids, None, None, None)
    chosen = raw_logprobs.gather(1, sampled.unsqueeze(1)).squeeze(1).tolist()
    if num_logprobs == 0:
        return SamplerOutput(token_ids, chosen, None, None)
    top_values, top_ids = raw_logprobs.topk(num_logprobs, dim=-1)
    return SamplerOutput(token_ids, chosen, top_ids.tolist(), top_values.tolist())
