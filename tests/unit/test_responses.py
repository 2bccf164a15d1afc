"""Response structs and builders, checked by parsing them with the openai SDK's own types."""

from __future__ import annotations

import json

import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from engine_core.messages.frontend_input import PositionLogprobs, TokenLogprob
from frontend import errors
from frontend.responses import (
    ChatChoice,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    ChatStreamChoice,
    CompletionChoice,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    chat_logprobs,
    completion_logprobs,
    encode_json,
    sse_error,
    usage_info,
)

pytestmark = pytest.mark.unit


def positions() -> list[PositionLogprobs]:
    return [
        PositionLogprobs(TokenLogprob(1, "Hel", -0.1),
                         [TokenLogprob(1, "Hel", -0.1), TokenLogprob(2, "He", -2.0)]),
        PositionLogprobs(TokenLogprob(3, "lo é", -0.5), [TokenLogprob(4, "p", -1.0)]),
    ]


def test_completion_response_parses_with_the_openai_sdk() -> None:
    logprobs = completion_logprobs(positions(), text_offset=5)
    choice = CompletionChoice(index=0, text="Hello é", logprobs=logprobs, finish_reason="length")
    response = CompletionResponse(id="cmpl-1", created=1, model="m", choices=[choice],
                                  usage=usage_info(3, 2, 1))
    parsed = Completion.model_validate_json(encode_json(response))
    assert parsed.object == "text_completion" and parsed.usage.total_tokens == 5
    assert parsed.usage.prompt_tokens_details.cached_tokens == 1
    lp = parsed.choices[0].logprobs
    assert lp.text_offset == [5, 8] and lp.tokens == ["Hel", "lo é"]
    assert lp.top_logprobs[1] == {"lo é": -0.5, "p": -1.0}  # sampled token listed first
    chunk = CompletionStreamResponse(id="cmpl-1", created=1, model="m", choices=[CompletionChoice(0, "x")])
    assert "usage" not in json.loads(encode_json(chunk))
    # The SDK reuses Completion for chunks (without validating); the last chunk also validates.
    last = CompletionStreamResponse(id="cmpl-1", created=1, model="m",
                                    choices=[CompletionChoice(0, "x", finish_reason="stop")], usage=None)
    assert json.loads(encode_json(last))["usage"] is None
    assert Completion.model_validate_json(encode_json(last)).choices[0].text == "x"


def test_chat_response_and_chunks_parse_with_the_openai_sdk() -> None:
    choice = ChatChoice(index=0, message=ChatResponseMessage(role="assistant", content="Hello"),
                        logprobs=chat_logprobs(positions()), finish_reason="stop")
    response = ChatCompletionResponse(id="chatcmpl-1", created=1, model="m", choices=[choice],
                                      usage=usage_info(3, 2))
    parsed = ChatCompletion.model_validate_json(encode_json(response))
    content = parsed.choices[0].logprobs.content
    assert content[1].token == "lo é" and content[1].bytes == list("lo é".encode())
    assert [t.token for t in content[0].top_logprobs] == ["Hel", "He"]
    first = ChatCompletionStreamResponse(id="c", created=1, model="m", choices=[
        ChatStreamChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])
    raw = json.loads(encode_json(first))
    assert raw["object"] == "chat.completion.chunk" and raw["choices"][0]["delta"] == {"role": "assistant",
                                                                                       "content": ""}
    last = ChatCompletionStreamResponse(id="c", created=1, model="m", choices=[], usage=usage_info(3, 2))
    assert ChatCompletionChunk.model_validate_json(encode_json(last)).usage.completion_tokens == 2


def test_model_list_and_sse_error() -> None:
    raw = json.loads(encode_json(ModelList(data=[ModelCard(id="smol", root="/m.gguf", max_model_len=2048)])))
    assert raw["object"] == "list"
    assert Model.model_validate(raw["data"][0]).id == "smol" and raw["data"][0]["max_model_len"] == 2048
    event = sse_error(errors.bad_request("nope", "stop"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:]) == {"error": {"message": "nope", "type": "invalid_request_error",
                                               "param": "stop", "code": None}}
