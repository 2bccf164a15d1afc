"""OpenAI request and response types (vLLM 0.6.4's field set) and their validation.

Requests decode straight from bytes with msgspec: unknown fields, wrong types and
missing fields fail during decoding; ``validate()`` then checks value ranges and
field combinations. Policy: nothing is silently ignored. A field Kestrel does not
implement yet is listed in ``UNSUPPORTED_FIELDS`` and rejected when set; the few
accepted-but-ignored fields are listed in ``docs/compatibility.md``.
"""

from __future__ import annotations

import re
import uuid
from functools import cache
from typing import Any, Literal, TypeVar

import msgspec

from engine_core.messages.engine_input import DetokenizeParams
from engine_core.request import SamplingParams
from frontend.errors import BadRequestError, bad_request

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default
COMPLETION_DEFAULT_TEMPERATURE = 1.0
CHAT_DEFAULT_TEMPERATURE = 0.7  # vLLM 0.6.4's chat default, see vllm-facts §1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_REQUEST = dict(forbid_unknown_fields=True, kw_only=True)


def random_uuid() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------- request types


class StreamOptions(msgspec.Struct, **_REQUEST):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class JsonSchemaFormat(msgspec.Struct, **_REQUEST):
    name: str
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, **_REQUEST):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class TextContentPart(msgspec.Struct, tag_field="type", tag="text", **_REQUEST):
    text: str


class FunctionCall(msgspec.Struct, **_REQUEST):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, **_REQUEST):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct, **_REQUEST):
    """One input message. Any role string is accepted: the chat template decides."""

    role: str
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(msgspec.Struct, **_REQUEST):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct, **_REQUEST):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct, **_REQUEST):
    name: str


class NamedToolChoice(msgspec.Struct, **_REQUEST):
    function: NamedFunction
    type: Literal["function"] = "function"


class _GenerationRequest(msgspec.Struct, **_REQUEST):
    """Fields both /v1/completions and /v1/chat/completions accept."""

    model: str
    # OpenAI standard; None means "the server default".
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = None
    n: int | None = 1
    presence_penalty: float | None = 0.0
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    echo: bool | None = False
    # vLLM sampling extras.
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float = 1.0
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    prompt_logprobs: int | None = None
    # vLLM guided decoding and scheduling extras.
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    priority: int = 0

    def validate(self) -> None:
        _validate_sampling(self)
        _validate_combinations(self)


class CompletionRequest(_GenerationRequest, **_REQUEST):
    prompt: str | list[str | int | list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    suffix: str | None = None
    allowed_token_ids: list[int] | None = None
    add_special_tokens: bool = True

    def validate(self) -> None:
        validate_prompt_batch(self.prompt, "prompt")
        _check(self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS, "logprobs",
               f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}.")
        super().validate()
        reject_unsupported(self)


class ChatCompletionRequest(_GenerationRequest, **_REQUEST):
    messages: list[ChatMessage]
    logprobs: bool | None = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = "none"
    parallel_tool_calls: bool | None = None  # accepted and ignored, like vLLM 0.6.4
    service_tier: str | None = None  # accepted and ignored: there is one tier
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    request_id: str = msgspec.field(default_factory=random_uuid)

    def validate(self) -> None:
        validate_messages(self.messages)
        if self.top_logprobs is not None:
            _check(0 <= self.top_logprobs <= MAX_LOGPROBS, "top_logprobs",
                   f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got {self.top_logprobs}.")
            _check(bool(self.logprobs), "top_logprobs", "top_logprobs requires logprobs to be true.")
        _check(self.max_completion_tokens is None or self.max_completion_tokens >= 1,
               "max_completion_tokens", "max_completion_tokens must be at least 1.")
        _check(not (self.continue_final_message and self.add_generation_prompt), "continue_final_message",
               "continue_final_message and add_generation_prompt cannot both be true; "
               "set add_generation_prompt to false.")
        _validate_tool_choice(self)
        super().validate()
        reject_unsupported(self)


GenerationRequest = CompletionRequest | ChatCompletionRequest
RequestT = TypeVar("RequestT", CompletionRequest, ChatCompletionRequest)

# ---------------------------------------------------------------- parsing and validation

# Fields Kestrel does not implement yet, with the values that mean "unused".
# Anything else is rejected with a 400 naming the field (no silent ignoring).
UNSUPPORTED_FIELDS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("n", (None, 1)),
    ("best_of", (None, 1)),
    ("use_beam_search", (False,)),
    ("length_penalty", (1.0,)),
    ("echo", (None, False)),
    ("suffix", (None,)),
    ("logit_bias", (None, {})),
    ("allowed_token_ids", (None,)),
    ("prompt_logprobs", (None,)),
    ("truncate_prompt_tokens", (None,)),
    ("response_format", (None, ResponseFormat(type="text"))),
    ("guided_json", (None,)),
    ("guided_regex", (None,)),
    ("guided_choice", (None,)),
    ("guided_grammar", (None,)),
    ("guided_decoding_backend", (None,)),
    ("guided_whitespace_pattern", (None,)),
    ("tools", (None, [])),
    ("tool_choice", (None, "none")),
    ("documents", (None, [])),
    ("priority", (0,)),
)
_MISSING = object()


def reject_unsupported(req: GenerationRequest) -> None:
    for field, unused_values in UNSUPPORTED_FIELDS:
        value = getattr(req, field, _MISSING)
        if value is not _MISSING and value not in unused_values:
            raise bad_request(f"`{field}` is not supported by this server yet (got {value!r}).", field)


def _check(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise bad_request(message, param)


@cache
def _decoder(cls: type) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(cls)


# msgspec names the offending field in backticks and its location as `$.a[0].b`.
_FIELD_RE = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
_PATH_RE = re.compile(r" - at `\$(?:\.)?([^`]*)`$")


def _param_from_validation_error(message: str) -> str | None:
    path_match = _PATH_RE.search(message)
    path = path_match.group(1) if path_match else ""
    field_match = _FIELD_RE.search(message)
    if field_match:
        path = f"{path}.{field_match.group(1)}" if path else field_match.group(1)
    return path or None


def parse_request(body: bytes, cls: type[RequestT]) -> RequestT:
    """Decode and validate a request body; every failure is a 400 ``BadRequestError``."""
    try:
        request = _decoder(cls).decode(body)
    except msgspec.ValidationError as exc:
        param = _param_from_validation_error(str(exc))
        raise BadRequestError(f"Invalid request: {exc}", param=param) from None
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"Request body is not valid JSON: {exc}") from None
    request.validate()
    return request


def validate_prompt_batch(value: str | list[str | int | list[int]], param: str) -> None:
    """A prompt-like field: a string, strings, token ids or lists of token ids, none empty."""
    _check(len(value) > 0, param, f"{param} must not be empty.")
    if isinstance(value, str):
        return
    kinds = {type(item) for item in value}
    _check(len(kinds) == 1, param,
           f"{param} must be a string, a list of strings, a list of token ids or a list of token id lists.")
    items = [value] if kinds == {int} else value
    for item in items:
        _check(len(item) > 0, param, f"{param} must not contain an empty string or token list.")
        if not isinstance(item, str):
            _check(all(token >= 0 for token in item), param, f"{param} token ids must be non-negative.")


def validate_messages(messages: list[ChatMessage]) -> None:
    _check(len(messages) > 0, "messages", "messages must contain at least one message.")
    for i, message in enumerate(messages):
        _check(bool(message.role), f"messages[{i}].role", "message role must not be empty.")
        _check(message.content is not None or message.role == "assistant", f"messages[{i}].content",
               f"content is required for a message with role '{message.role}'.")


def _validate_sampling(req: GenerationRequest) -> None:
    """Value ranges shared by both APIs (vLLM's SamplingParams rules)."""
    ranges: tuple[tuple[str, Any, bool, str], ...] = (
        ("temperature", req.temperature, req.temperature is None or 0.0 <= req.temperature <= 2.0,
         "in [0, 2]"),
        ("top_p", req.top_p, req.top_p is None or 0.0 < req.top_p <= 1.0, "in (0, 1]"),
        ("top_k", req.top_k, req.top_k is None or req.top_k == -1 or req.top_k >= 1,
         "-1 (off) or at least 1"),
        ("min_p", req.min_p, req.min_p is None or 0.0 <= req.min_p <= 1.0, "in [0, 1]"),
        ("presence_penalty", req.presence_penalty,
         req.presence_penalty is None or -2.0 <= req.presence_penalty <= 2.0, "in [-2, 2]"),
        ("frequency_penalty", req.frequency_penalty,
         req.frequency_penalty is None or -2.0 <= req.frequency_penalty <= 2.0, "in [-2, 2]"),
        ("repetition_penalty", req.repetition_penalty,
         req.repetition_penalty is None or req.repetition_penalty > 0.0, "greater than 0"),
        ("n", req.n, req.n is None or req.n >= 1, "at least 1"),
        ("best_of", req.best_of, req.best_of is None or req.best_of >= max(req.n or 1, 1), "at least n"),
        ("max_tokens", req.max_tokens, req.max_tokens is None or req.max_tokens >= 1, "at least 1"),
        ("min_tokens", req.min_tokens, req.min_tokens >= 0, "at least 0"),
        ("seed", req.seed, req.seed is None or INT64_MIN <= req.seed <= INT64_MAX, "a 64-bit signed integer"),
        ("truncate_prompt_tokens", req.truncate_prompt_tokens,
         req.truncate_prompt_tokens is None or req.truncate_prompt_tokens >= 1, "at least 1"),
        ("prompt_logprobs", req.prompt_logprobs, req.prompt_logprobs is None or req.prompt_logprobs >= 0,
         "at least 0"),
    )
    for param, value, ok, expected in ranges:
        _check(ok, param, f"{param} must be {expected}, got {value!r}.")
    max_tokens = requested_max_tokens(req)
    _check(max_tokens is None or req.min_tokens <= max_tokens, "min_tokens",
           f"min_tokens ({req.min_tokens}) must be at most max_tokens ({max_tokens}).")
    _check(all(t >= 0 for t in req.stop_token_ids or ()), "stop_token_ids",
           "stop_token_ids must be non-negative.")
    _check(all(stop != "" for stop in _stop_list(req.stop)), "stop", "stop strings must not be empty.")


def _validate_combinations(req: GenerationRequest) -> None:
    _check(req.stream_options is None or bool(req.stream), "stream_options",
           "stream_options can only be set when stream is true.")
    _check(req.prompt_logprobs is None or not req.stream, "prompt_logprobs",
           "prompt_logprobs cannot be used with stream.")
    guided = [name for name in ("guided_json", "guided_regex", "guided_choice")
              if getattr(req, name) is not None]
    _check(len(guided) <= 1, guided[-1] if guided else "guided_json",
           f"At most one of guided_json, guided_regex and guided_choice may be set, got {', '.join(guided)}.")


def _validate_tool_choice(req: ChatCompletionRequest) -> None:
    if req.tool_choice in (None, "none"):
        return
    _check(bool(req.tools), "tool_choice", "tool_choice requires tools to be set.")
    if isinstance(req.tool_choice, NamedToolChoice):
        name = req.tool_choice.function.name
        _check(any(tool.function.name == name for tool in req.tools or ()), "tool_choice",
               f"tool_choice names the function '{name}', which is not in tools.")


# ---------------------------------------------------------------- conversion to engine params


def requested_max_tokens(req: GenerationRequest) -> int | None:
    """The client's output limit; chat prefers max_completion_tokens over the deprecated max_tokens."""
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens


def check_context_length(num_prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> None:
    """Reject prompts that leave no room for output, in vLLM's wording."""
    if num_prompt_tokens >= max_model_len or (max_tokens is not None
                                               and num_prompt_tokens + max_tokens > max_model_len):
        total = num_prompt_tokens + (max_tokens or 0)
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{total} tokens ({num_prompt_tokens} in the prompt, {max_tokens or 0} for the completion). "
            "Please reduce the length of the prompt or completion.",
            "messages" if max_tokens is None else "max_tokens",
        )


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _requested_logprobs(req: GenerationRequest) -> int | None:
    if isinstance(req, ChatCompletionRequest):
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs


def to_sampling_params(req: GenerationRequest, default_max_tokens: int) -> SamplingParams:
    """Engine sampling parameters. ``default_max_tokens`` (max_model_len - prompt length)
    applies when the client sent no limit."""
    max_tokens = requested_max_tokens(req)
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    _check(req.min_tokens <= max_tokens, "min_tokens",
           f"min_tokens ({req.min_tokens}) must be at most max_tokens ({max_tokens}).")
    default_temperature = (CHAT_DEFAULT_TEMPERATURE if isinstance(req, ChatCompletionRequest)
                           else COMPLETION_DEFAULT_TEMPERATURE)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=default_temperature if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=-1 if req.top_k is None else req.top_k,
        min_p=0.0 if req.min_p is None else req.min_p,
        seed=req.seed,
        min_tokens=req.min_tokens,
        stop_token_ids=list(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
        logprobs=_requested_logprobs(req),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
    )


def to_detokenize_params(req: GenerationRequest) -> DetokenizeParams:
    return DetokenizeParams(
        stop=_stop_list(req.stop),
        include_stop_str_in_output=req.include_stop_str_in_output,
        skip_special_tokens=req.skip_special_tokens,
        spaces_between_special_tokens=req.spaces_between_special_tokens,
        logprobs=_requested_logprobs(req) is not None,
    )


def completion_prompts(req: CompletionRequest) -> list[str | list[int]]:
    """The prompt field as a batch: one entry per prompt (text or token ids)."""
    prompt = req.prompt
    if isinstance(prompt, str) or isinstance(prompt[0], int):
        return [prompt]  # type: ignore[list-item]
    return list(prompt)  # type: ignore[arg-type]
