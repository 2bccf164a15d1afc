"""/v1/embeddings request and response types (vLLM 0.6.4's two embedding requests in one).

vLLM has ``EmbeddingRequest`` (``input``) and ``EmbeddingChatRequest`` (``messages``); here
one struct carries both and ``validate()`` enforces that exactly one is set and that the
chat-only fields come only with ``messages``. Policy as in ``protocol.py``: nothing set
by the client is silently ignored, except ``user`` and ``additional_data`` (vLLM accepts
and ignores them too).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from frontend.errors import bad_request
from frontend.protocol import (
    ChatMessage,
    parse_request,
    random_uuid,
    validate_messages,
    validate_prompt_batch,
)

EncodingFormat = Literal["float", "base64"]
# Fields that only make sense when rendering ``messages`` through a chat template.
CHAT_ONLY_FIELDS = ("add_generation_prompt", "continue_final_message", "chat_template",
                    "chat_template_kwargs")


class EmbeddingRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    # One text, a batch of texts, one token-id list or a batch of them (checked in validate()).
    input: str | list[str | int | list[int]] | None = None
    messages: list[ChatMessage] | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None  # rejected when set: no Matryoshka truncation
    user: str | None = None  # accepted and ignored
    truncate_prompt_tokens: int | None = None  # keep the last N prompt tokens
    additional_data: Any | None = None  # accepted and ignored, like vLLM
    # None = vLLM's default for the request kind: True for input, False for messages
    # (a chat template already writes the special tokens it wants).
    add_special_tokens: bool | None = None
    priority: int = 0
    # Chat-only (None = unset; the defaults are applied by the properties below).
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def use_special_tokens(self) -> bool:
        return (not self.is_chat) if self.add_special_tokens is None else self.add_special_tokens

    @property
    def use_generation_prompt(self) -> bool:
        return True if self.add_generation_prompt is None else self.add_generation_prompt

    @property
    def use_continue_final_message(self) -> bool:
        return bool(self.continue_final_message)

    def validate(self) -> None:
        if (self.input is None) == (self.messages is None):
            raise bad_request("Exactly one of `input` and `messages` must be given.",
                              "input" if self.input is None else "messages")
        if self.input is not None:
            validate_prompt_batch(self.input, "input")
            for field in CHAT_ONLY_FIELDS:
                _check(getattr(self, field) is None, field, f"`{field}` can only be used with `messages`.")
        else:
            validate_messages(self.messages or [])
            _check(not (self.use_continue_final_message and self.use_generation_prompt),
                   "continue_final_message",
                   "continue_final_message and add_generation_prompt cannot both be true; "
                   "set add_generation_prompt to false.")
        _check(self.dimensions is None, "dimensions",
               "`dimensions` is not supported: this server returns the model's full embedding size.")
        _check(self.truncate_prompt_tokens is None or self.truncate_prompt_tokens >= 1,
               "truncate_prompt_tokens",
               f"truncate_prompt_tokens must be at least 1, got {self.truncate_prompt_tokens!r}.")
        _check(self.priority == 0, "priority",
               f"`priority` is not supported by this server yet (got {self.priority!r}).")


def _check(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise bad_request(message, param)


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Decode and validate a /v1/embeddings body; every failure is a 400 ``BadRequestError``."""
    return parse_request(body, EmbeddingRequest)


def embedding_inputs(req: EmbeddingRequest) -> list[str | list[int]]:
    """The ``input`` field as a batch, one entry per embedding to return (not for chat requests)."""
    value = req.input
    assert value is not None, "chat requests are rendered through the chat template instead"
    if isinstance(value, str) or isinstance(value[0], int):
        return [value]  # type: ignore[list-item]
    return list(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------- response


class EmbeddingData(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct, kw_only=True):
    id: str = msgspec.field(default_factory=lambda: f"embd-{random_uuid()}")
    object: Literal["list"] = "list"
    created: int = msgspec.field(default_factory=lambda: int(time.time()))
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


def encode_embedding(vector: Sequence[float] | Any, fmt: EncodingFormat) -> list[float] | str:
    """One embedding as JSON floats or as base64 of its little-endian float32 bytes (what the
    openai client decodes with ``np.frombuffer(base64.b64decode(s), dtype="float32")``).
    ``vector``: a float sequence, a numpy array or a float32 CPU tensor (read via ``__array__``,
    so the frontend needs no torch import)."""
    array = np.asarray(vector, dtype="<f4").reshape(-1)
    if fmt == "base64":
        return base64.b64encode(array.tobytes()).decode("ascii")
    return array.tolist()


def embedding_response(model: str, vectors: Sequence[Sequence[float] | Any], fmt: EncodingFormat,
                       prompt_tokens: int) -> EmbeddingResponse:
    """The response for a batch of embeddings, in input order."""
    data = [EmbeddingData(embedding=encode_embedding(v, fmt), index=i) for i, v in enumerate(vectors)]
    return EmbeddingResponse(model=model, data=data,
                             usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens))
