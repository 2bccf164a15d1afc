"""Channel: detokenizer -> frontend. Batched per engine step, like StepOutputs."""

from __future__ import annotations

import msgspec

from engine_core.messages.engine_output import EmbeddingResults, Pong

_STRUCT = dict(array_like=True, omit_defaults=True, gc=False, tag=True)


class TokenLogprob(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    token_id: int
    text: str
    logprob: float


class PositionLogprobs(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    sampled: TokenLogprob
    top: list[TokenLogprob] = []


class RequestOutput(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """New text of one request since its last output."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[PositionLogprobs] = []
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0


class RequestOutputs(msgspec.Struct, **_STRUCT):
    outputs: list[RequestOutput]


FrontendInput = RequestOutputs | EmbeddingResults | Pong
