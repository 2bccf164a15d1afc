"""OpenAI response types and small builders (the request side is in ``protocol.py``).

Field names and nesting follow OpenAI's objects plus vLLM's ``stop_reason``
extra. Streaming chunks leave ``usage`` out unless it is set (``None`` encodes as
null), matching OpenAI with and without ``stream_options.include_usage``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

from engine_core.messages.frontend_input import PositionLogprobs, TokenLogprob
from frontend.errors import APIError, error_body
from frontend.protocol import random_uuid


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class UsageInfo(msgspec.Struct):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


# ---------------------------------------------------------------- completions


class CompletionLogProbs(msgspec.Struct):
    text_offset: list[int] = []
    token_logprobs: list[float | None] = []
    tokens: list[str] = []
    top_logprobs: list[dict[str, float] | None] = []


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionStreamResponse(msgspec.Struct, kw_only=True):
    """One SSE chunk; same choice shape as the full response (``text`` is the delta)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None | msgspec.UnsetType = msgspec.UNSET


# ---------------------------------------------------------------- chat


class FunctionCallOut(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    function: FunctionCallOut
    id: str = msgspec.field(default_factory=lambda: f"chatcmpl-tool-{random_uuid()}")
    type: Literal["function"] = "function"


class ChatResponseMessage(msgspec.Struct):
    role: str
    content: str | None = None
    tool_calls: list[ToolCallOut] = []


class ChatTopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[ChatTopLogprob] = []


class ChatLogProbs(msgspec.Struct):
    content: list[ChatTokenLogprob] | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaFunctionCall(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(msgspec.Struct, omit_defaults=True):
    """Only the parts that changed: the first chunk carries ``role``, later ones ``content``."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] = []


class ChatStreamChoice(msgspec.Struct):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None | msgspec.UnsetType = msgspec.UNSET


# ---------------------------------------------------------------- models


class ModelPermission(msgspec.Struct):
    id: str = msgspec.field(default_factory=lambda: f"modelperm-{random_uuid()}")
    object: Literal["model_permission"] = "model_permission"
    created: int = msgspec.field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(msgspec.Struct):
    id: str
    object: Literal["model"] = "model"
    created: int = msgspec.field(default_factory=lambda: int(time.time()))
    owned_by: str = "kestrel"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = msgspec.field(default_factory=lambda: [ModelPermission()])


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: Literal["list"] = "list"


# ---------------------------------------------------------------- builders

_encoder = msgspec.json.Encoder()
SSE_DONE = b"data: [DONE]\n\n"


def encode_json(obj: Any) -> bytes:
    return _encoder.encode(obj)


def sse_event(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def sse_error(err: APIError) -> bytes:
    """A mid-stream error event; the caller still sends ``SSE_DONE`` after it."""
    return sse_event(error_body(err))


def now() -> int:
    return int(time.time())


def usage_info(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> UsageInfo:
    details = None if cached_tokens is None else PromptTokensDetails(cached_tokens=cached_tokens)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=details)


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(positions: list[PositionLogprobs]) -> ChatLogProbs:
    """Chat's ``logprobs.content``: one entry per sampled token with its top alternatives."""
    content = [
        ChatTokenLogprob(
            token=pos.sampled.text, logprob=pos.sampled.logprob, bytes=_utf8(pos.sampled.text),
            top_logprobs=[ChatTopLogprob(token=alt.text, logprob=alt.logprob, bytes=_utf8(alt.text))
                          for alt in pos.top],
        )
        for pos in positions
    ]
    return ChatLogProbs(content=content)


def _top_dict(sampled: TokenLogprob, top: list[TokenLogprob]) -> dict[str, float]:
    # The legacy API always lists the sampled token among the alternatives.
    entries = {sampled.text: sampled.logprob}
    for alt in top:
        entries.setdefault(alt.text, alt.logprob)
    return entries


def completion_logprobs(positions: list[PositionLogprobs], text_offset: int = 0) -> CompletionLogProbs:
    """Completions' legacy logprobs; ``text_offset`` is the length of the text already returned."""
    offsets: list[int] = []
    for pos in positions:
        offsets.append(text_offset)
        text_offset += len(pos.sampled.text)
    return CompletionLogProbs(
        text_offset=offsets,
        token_logprobs=[pos.sampled.logprob for pos in positions],
        tokens=[pos.sampled.text for pos in positions],
        top_logprobs=[_top_dict(pos.sampled, pos.top) for pos in positions],
    )
