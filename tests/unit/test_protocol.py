"""Request parsing/validation, conversion to engine params, error shapes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from frontend import errors
from frontend.protocol import (
    CHAT_DEFAULT_TEMPERATURE,
    COMPLETION_DEFAULT_TEMPERATURE,
    UNSUPPORTED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    check_context_length,
    completion_prompts,
    parse_request,
    to_detokenize_params,
    to_sampling_params,
)

pytestmark = pytest.mark.unit

USER_MESSAGES = [{"role": "user", "content": "hi"}]


def completion(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": "hello", **fields}).encode()


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER_MESSAGES, **fields}).encode()


def body_for(cls: type, **fields: Any) -> bytes:
    return chat(**fields) if cls is ChatCompletionRequest else completion(**fields)


def expect_400(body: bytes, cls: type, param: str | None) -> errors.BadRequestError:
    with pytest.raises(errors.BadRequestError) as info:
        parse_request(body, cls)
    err = info.value
    assert err.status == 400 and err.type == "invalid_request_error"
    assert err.param == param, err.message
    return err


BOTH = pytest.mark.parametrize("cls", [CompletionRequest, ChatCompletionRequest])

# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("err, status", [
    (errors.bad_request("bad", "temperature"), 400),
    (errors.unauthorized(), 401),
    (errors.model_not_found("gpt-9"), 404),
    (errors.payload_too_large(10, 5), 413),
    (errors.UnprocessableEntityError("x"), 422),
    (errors.RateLimitError("slow down"), 429),
    (errors.InternalServerError("boom"), 500),
    (errors.overloaded(), 503),
])
def test_error_body_has_exactly_the_openai_shape(err: errors.APIError, status: int) -> None:
    body = json.loads(json.dumps(errors.error_body(err)))
    assert err.status == status
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == err.message and body["error"]["type"] == err.type


def test_not_found_names_the_model() -> None:
    err = errors.model_not_found("gpt-9")
    assert err.message == "The model `gpt-9` does not exist." and err.param == "model"


def test_unexpected_exceptions_become_500_without_internals() -> None:
    err = errors.as_api_error(KeyError("secret path /etc"))
    assert err.status == 500 and "secret" not in err.message
    original = errors.bad_request("x")
    assert errors.as_api_error(original) is original


def test_parse_failure_error_body_names_the_param() -> None:
    err = expect_400(completion(temperature="hot"), CompletionRequest, "temperature")
    assert errors.error_body(err)["error"]["param"] == "temperature"
    assert "temperature" in err.message


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"model": "m",}'])
def test_malformed_json_is_400(body: bytes) -> None:
    err = expect_400(body, CompletionRequest, None)
    assert "JSON" in err.message


def test_body_must_be_an_object() -> None:
    expect_400(b'["m"]', ChatCompletionRequest, None)


@BOTH
def test_unknown_fields_are_rejected(cls: type) -> None:
    err = expect_400(body_for(cls, frobnicate=1), cls, "frobnicate")
    assert "unknown field" in err.message


def test_functions_era_fields_are_rejected() -> None:
    expect_400(chat(functions=[{"name": "f"}]), ChatCompletionRequest, "functions")
    expect_400(chat(function_call="auto"), ChatCompletionRequest, "function_call")


def test_nested_unknown_field_names_its_path() -> None:
    body = chat(messages=[{"role": "user", "content": "x", "mood": "happy"}])
    expect_400(body, ChatCompletionRequest, "messages[0].mood")


@pytest.mark.parametrize("cls, body, param", [
    (CompletionRequest, b'{"prompt": "x"}', "model"),
    (CompletionRequest, b'{"model": "m"}', "prompt"),
    (ChatCompletionRequest, b'{"model": "m"}', "messages"),
    (ChatCompletionRequest, b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
])
def test_missing_required_fields(cls: type, body: bytes, param: str) -> None:
    err = expect_400(body, cls, param)
    assert "missing required field" in err.message


@pytest.mark.parametrize("cls, fields, param", [
    (CompletionRequest, {"temperature": "0.5"}, "temperature"),
    (CompletionRequest, {"max_tokens": 1.5}, "max_tokens"),
    (CompletionRequest, {"stream": "yes"}, "stream"),
    (CompletionRequest, {"ignore_eos": 1}, "ignore_eos"),
    (CompletionRequest, {"prompt": True}, "prompt"),
    (CompletionRequest, {"prompt": [[1, "a"]]}, "prompt[0][1]"),
    (CompletionRequest, {"stop": 5}, "stop"),
    (ChatCompletionRequest, {"logprobs": 5}, "logprobs"),
    (ChatCompletionRequest, {"messages": "hi"}, "messages"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    (ChatCompletionRequest, {"tool_choice": "sometimes"}, "tool_choice"),
])
def test_wrong_types_name_the_field(cls: type, fields: dict[str, Any], param: str) -> None:
    expect_400(body_for(cls, **fields), cls, param)


def test_only_text_content_parts() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    err = expect_400(chat(messages=[{"role": "user", "content": parts}]), ChatCompletionRequest,
                     "messages[0].content[0].type")
    assert "image_url" in err.message


def test_all_prompt_shapes_are_accepted() -> None:
    for prompt, expected in [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ]:
        req = parse_request(completion(prompt=prompt), CompletionRequest)
        assert completion_prompts(req) == expected


def test_chat_messages_accept_roles_parts_and_tool_fields() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "really"},
        {"role": "user", "name": "bo",
         "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "narrator", "content": "custom roles pass through to the template"},
    ]
    req = parse_request(chat(messages=messages), ChatCompletionRequest)
    assert [m.role for m in req.messages] == [m["role"] for m in messages]
    assert [p.text for p in req.messages[2].content] == ["a", "b"]
    assert req.messages[3].tool_calls[0].function.name == "f"
    assert req.messages[4].tool_call_id == "c1"


def test_every_vllm_field_is_accepted_at_its_default() -> None:
    shared = {
        "best_of": 1, "use_beam_search": False, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "stop_token_ids": [], "include_stop_str_in_output": False, "ignore_eos": False,
        "min_tokens": 0, "skip_special_tokens": True, "spaces_between_special_tokens": True,
        "truncate_prompt_tokens": None, "prompt_logprobs": None, "response_format": {"type": "text"},
        "guided_json": None, "guided_regex": None, "guided_choice": None, "guided_grammar": None,
        "guided_decoding_backend": None, "guided_whitespace_pattern": None, "priority": 0,
        "frequency_penalty": 0.0, "presence_penalty": 0.0, "logit_bias": None, "n": 1, "seed": 7,
        "stop": None, "stream": False, "temperature": 0.5, "top_p": 1.0, "user": "u", "echo": False,
        "max_tokens": 8,
    }
    parse_request(completion(**shared, logprobs=None, suffix=None, allowed_token_ids=None,
                             add_special_tokens=True), CompletionRequest)
    req = parse_request(chat(**shared, logprobs=False, top_logprobs=None, max_completion_tokens=8,
                             tools=None, tool_choice="none", parallel_tool_calls=True,
                             add_generation_prompt=True, continue_final_message=False,
                             add_special_tokens=False, documents=None,
                             chat_template="{{ x }}", chat_template_kwargs={"k": 1}, request_id="r1",
                             service_tier="auto"), ChatCompletionRequest)
    assert req.request_id == "r1" and req.chat_template_kwargs == {"k": 1}


def test_request_id_defaults_to_a_fresh_uuid() -> None:
    a = parse_request(chat(), ChatCompletionRequest)
    b = parse_request(chat(), ChatCompletionRequest)
    assert a.request_id and a.request_id != b.request_id


@BOTH
def test_null_standard_fields_mean_server_defaults(cls: type) -> None:
    nulls = dict.fromkeys(["temperature", "top_p", "n", "max_tokens", "stop", "seed", "stream",
                           "frequency_penalty", "presence_penalty", "logprobs", "user"])
    req = parse_request(body_for(cls, **nulls), cls)
    params = to_sampling_params(req, default_max_tokens=99)
    assert params.top_p == 1.0 and params.max_tokens == 99 and params.logprobs is None


# ---------------------------------------------------------------- value ranges

RANGE_CASES = [
    ("temperature", -0.1, 0.0), ("temperature", 2.01, 2.0),
    ("top_p", 0.0, 1e-6), ("top_p", 1.5, 1.0),
    ("top_k", 0, -1), ("top_k", -2, 1),
    ("min_p", -0.1, 0.0), ("min_p", 1.1, 1.0),
    ("presence_penalty", 2.5, -2.0), ("frequency_penalty", -2.5, 2.0),
    ("repetition_penalty", 0.0, 0.01),
    ("n", 0, 1),
    ("max_tokens", 0, 1),
    ("min_tokens", -1, 0),
    ("seed", 2**63, 2**63 - 1), ("seed", -(2**63) - 1, -(2**63)),
    ("stop_token_ids", [-1], [0]),
    ("stop", "", "END"), ("stop", ["a", ""], ["a", "b"]),
]


@BOTH
@pytest.mark.parametrize("field, bad, good", RANGE_CASES)
def test_ranges(cls: type, field: str, bad: Any, good: Any) -> None:
    err = expect_400(body_for(cls, **{field: bad}), cls, field)
    assert field in err.message
    parse_request(body_for(cls, **{field: good}), cls)


def test_completion_logprobs_range() -> None:
    expect_400(completion(logprobs=21), CompletionRequest, "logprobs")
    expect_400(completion(logprobs=-1), CompletionRequest, "logprobs")
    assert parse_request(completion(logprobs=20), CompletionRequest).logprobs == 20


def test_chat_top_logprobs_range_and_dependency() -> None:
    expect_400(chat(logprobs=True, top_logprobs=21), ChatCompletionRequest, "top_logprobs")
    err = expect_400(chat(top_logprobs=2), ChatCompletionRequest, "top_logprobs")
    assert "logprobs" in err.message
    expect_400(chat(logprobs=False, top_logprobs=0), ChatCompletionRequest, "top_logprobs")
    parse_request(chat(logprobs=True, top_logprobs=20), ChatCompletionRequest)


def test_max_completion_tokens_range() -> None:
    expect_400(chat(max_completion_tokens=0), ChatCompletionRequest, "max_completion_tokens")


@BOTH
def test_min_tokens_at_most_max_tokens(cls: type) -> None:
    expect_400(body_for(cls, min_tokens=5, max_tokens=4), cls, "min_tokens")
    parse_request(body_for(cls, min_tokens=4, max_tokens=4), cls)


def test_chat_min_tokens_checked_against_max_completion_tokens() -> None:
    body = chat(min_tokens=5, max_tokens=10, max_completion_tokens=4)
    expect_400(body, ChatCompletionRequest, "min_tokens")


@BOTH
def test_stream_options_requires_stream(cls: type) -> None:
    expect_400(body_for(cls, stream_options={"include_usage": True}), cls, "stream_options")
    req = parse_request(body_for(cls, stream=True, stream_options={"include_usage": True}), cls)
    assert req.stream_options.include_usage is True


@BOTH
def test_prompt_logprobs_not_with_stream(cls: type) -> None:
    err = expect_400(body_for(cls, stream=True, prompt_logprobs=1), cls, "prompt_logprobs")
    assert "stream" in err.message
    expect_400(body_for(cls, prompt_logprobs=-1), cls, "prompt_logprobs")


@pytest.mark.parametrize("prompt", ["", [], [""], [[]], [[1], []], ["a", ""]])
def test_empty_prompts_are_rejected(prompt: Any) -> None:
    expect_400(completion(prompt=prompt), CompletionRequest, "prompt")


@pytest.mark.parametrize("prompt", [[1, -1], [[1], [-5]], ["a", 1], [[1], 2]])
def test_bad_token_prompts_are_rejected(prompt: Any) -> None:
    expect_400(completion(prompt=prompt), CompletionRequest, "prompt")


def test_empty_messages_and_missing_content() -> None:
    expect_400(chat(messages=[]), ChatCompletionRequest, "messages")
    expect_400(chat(messages=[{"role": "user"}]), ChatCompletionRequest, "messages[0].content")
    expect_400(chat(messages=[{"role": "", "content": "x"}]), ChatCompletionRequest, "messages[0].role")


def test_suffix_is_rejected() -> None:
    err = expect_400(completion(suffix="end"), CompletionRequest, "suffix")
    assert "not supported" in err.message


@BOTH
def test_at_most_one_guided_mode(cls: type) -> None:
    err = expect_400(body_for(cls, guided_regex="a+", guided_choice=["a", "b"]), cls, "guided_choice")
    assert "guided_regex" in err.message
    expect_400(body_for(cls, guided_regex="a+"), cls, "guided_regex")  # one is fine, but unsupported


def test_continue_final_message_excludes_add_generation_prompt() -> None:
    expect_400(chat(continue_final_message=True), ChatCompletionRequest, "continue_final_message")
    req = parse_request(chat(continue_final_message=True, add_generation_prompt=False), ChatCompletionRequest)
    assert req.continue_final_message and not req.add_generation_prompt


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_tool_choice_requires_tools() -> None:
    err = expect_400(chat(tool_choice="auto"), ChatCompletionRequest, "tool_choice")
    assert "tools" in err.message
    named = {"type": "function", "function": {"name": "other"}}
    err = expect_400(chat(tools=[TOOL], tool_choice=named), ChatCompletionRequest, "tool_choice")
    assert "other" in err.message


# ---------------------------------------------------------------- unsupported fields

UNSUPPORTED_SAMPLES: dict[str, Any] = {
    "n": 2, "best_of": 2, "use_beam_search": True, "length_penalty": 0.5, "echo": True, "suffix": "x",
    "logit_bias": {"50256": -100}, "allowed_token_ids": [1, 2], "prompt_logprobs": 1,
    "truncate_prompt_tokens": 8, "response_format": {"type": "json_object"},
    "guided_json": {"type": "object"},
    "guided_regex": "a+", "guided_choice": ["a"], "guided_grammar": "root ::= 'a'",
    "guided_decoding_backend": "outlines", "guided_whitespace_pattern": " ", "tools": [TOOL],
    "tool_choice": "auto", "documents": [{"title": "t", "text": "x"}], "priority": 1,
}


def test_every_unsupported_field_has_a_sample() -> None:
    assert {field for field, _ in UNSUPPORTED_FIELDS} == set(UNSUPPORTED_SAMPLES)


@BOTH
@pytest.mark.parametrize("field, unused_values", UNSUPPORTED_FIELDS)
def test_unsupported_fields_are_rejected_by_name(cls: type, field: str,
                                                 unused_values: tuple[Any, ...]) -> None:
    if field not in cls.__struct_fields__:
        expect_400(body_for(cls, **{field: UNSUPPORTED_SAMPLES[field]}), cls, field)  # unknown here
        return
    extra = {"tools": [TOOL]} if field == "tool_choice" else {}
    err = expect_400(body_for(cls, **{field: UNSUPPORTED_SAMPLES[field]}, **extra),
                     cls, "tools" if extra else field)
    assert "not supported" in err.message
    for value in unused_values:
        parse_request(body_for(cls, **{field: msgspec.to_builtins(value)}), cls)


def test_json_schema_response_format_is_rejected() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    expect_400(chat(response_format=fmt), ChatCompletionRequest, "response_format")
    expect_400(chat(response_format={"type": "yaml"}), ChatCompletionRequest, "response_format.type")


def test_beam_search_message_says_unsupported() -> None:
    err = expect_400(completion(use_beam_search=True), CompletionRequest, "use_beam_search")
    assert "not supported" in err.message


# ---------------------------------------------------------------- conversion


def test_completion_sampling_defaults() -> None:
    params = to_sampling_params(parse_request(completion(), CompletionRequest), default_max_tokens=500)
    assert params.temperature == COMPLETION_DEFAULT_TEMPERATURE == 1.0
    assert params.max_tokens == 16  # the completions API default, not max_model_len - prompt
    assert (params.top_p, params.top_k, params.min_p, params.repetition_penalty) == (1.0, -1, 0.0, 1.0)
    assert params.logprobs is None and params.seed is None


def test_chat_sampling_defaults() -> None:
    params = to_sampling_params(parse_request(chat(), ChatCompletionRequest), default_max_tokens=500)
    assert params.temperature == CHAT_DEFAULT_TEMPERATURE == 0.7
    assert params.max_tokens == 500


def test_chat_prefers_max_completion_tokens() -> None:
    req = parse_request(chat(max_tokens=50, max_completion_tokens=7), ChatCompletionRequest)
    assert to_sampling_params(req, 500).max_tokens == 7
    req = parse_request(chat(max_tokens=50), ChatCompletionRequest)
    assert to_sampling_params(req, 500).max_tokens == 50


def test_sampling_fields_pass_through() -> None:
    fields = {"temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": -3, "min_tokens": 2,
              "stop_token_ids": [5, 6], "ignore_eos": True, "presence_penalty": 0.5,
              "frequency_penalty": -0.5, "repetition_penalty": 1.3, "max_tokens": 9}
    params = to_sampling_params(parse_request(completion(**fields), CompletionRequest), 500)
    for name, value in fields.items():
        assert getattr(params, name) == value, name
    assert params.greedy


def test_logprobs_mapping() -> None:
    assert to_sampling_params(parse_request(completion(logprobs=0), CompletionRequest), 9).logprobs == 0
    assert to_sampling_params(parse_request(completion(logprobs=5), CompletionRequest), 9).logprobs == 5
    assert to_sampling_params(parse_request(chat(logprobs=True), ChatCompletionRequest), 9).logprobs == 0
    chat_req = parse_request(chat(logprobs=True, top_logprobs=4), ChatCompletionRequest)
    assert to_sampling_params(chat_req, 9).logprobs == 4
    assert to_detokenize_params(chat_req).logprobs is True
    assert to_detokenize_params(parse_request(chat(), ChatCompletionRequest)).logprobs is False


def test_min_tokens_above_the_default_limit_is_400() -> None:
    req = parse_request(chat(min_tokens=50), ChatCompletionRequest)
    with pytest.raises(errors.BadRequestError) as info:
        to_sampling_params(req, default_max_tokens=10)
    assert info.value.param == "min_tokens"


def test_detokenize_params() -> None:
    params = to_detokenize_params(parse_request(completion(stop="###"), CompletionRequest))
    assert params.stop == ["###"] and params.skip_special_tokens and not params.include_stop_str_in_output
    fields = {"stop": ["a", "b"], "include_stop_str_in_output": True, "skip_special_tokens": False,
              "spaces_between_special_tokens": False}
    params = to_detokenize_params(parse_request(chat(**fields), ChatCompletionRequest))
    assert (params.stop, params.include_stop_str_in_output) == (["a", "b"], True)
    assert not params.skip_special_tokens and not params.spaces_between_special_tokens


def test_check_context_length() -> None:
    check_context_length(10, 90, max_model_len=100)
    check_context_length(99, None, max_model_len=100)
    with pytest.raises(errors.BadRequestError) as info:
        check_context_length(10, 91, max_model_len=100)
    assert "maximum context length is 100" in info.value.message and "101" in info.value.message
    with pytest.raises(errors.BadRequestError):
        check_context_length(100, None, max_model_len=100)
