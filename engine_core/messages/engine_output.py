"""Channel: engine core -> detokenizer. One message per engine step."""

from __future__ import annotations

import msgspec

from engine_core.messages.engine_input import DetokenizeParams

_STRUCT = dict(array_like=True, omit_defaults=True, gc=False, tag=True)


class NewRequest(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    request_id: str
    prompt_token_ids: list[int]
    detokenize: DetokenizeParams


class Logprobs(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Logprobs of one sampled token plus the top-k alternatives."""

    sampled: float
    top_ids: list[int] = []
    top_logprobs: list[float] = []


class RequestDelta(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one request gained in one step."""

    request_id: str
    new_token_ids: list[int]
    logprobs: list[Logprobs] = []
    finish_reason: int = -1  # FinishReason value, -1 while running
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0


class EngineStats(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    max_model_len: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    num_preemptions: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_queries: int = 0


class StepOutputs(msgspec.Struct, **_STRUCT):
    new_requests: list[NewRequest] = []
    deltas: list[RequestDelta] = []


class EmbeddingResult(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    request_id: str
    embedding: list[float]
    num_prompt_tokens: int


class EmbeddingResults(msgspec.Struct, **_STRUCT):
    """Every embedding finished in one engine step; the detokenizer forwards it unchanged."""

    results: list[EmbeddingResult]


class Pong(msgspec.Struct, **_STRUCT):
    seq: int
    stats: EngineStats


EngineOutput = StepOutputs | EmbeddingResults | Pong
