"""/v1/embeddings request validation, response shape and the base64 float32 encoding."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from openai.types import CreateEmbeddingResponse

from frontend import errors
from frontend.embedding_protocol import (
    CHAT_ONLY_FIELDS,
    EmbeddingRequest,
    embedding_inputs,
    embedding_response,
    encode_embedding,
    parse_embedding_request,
)

pytestmark = pytest.mark.unit

USER_MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


def expect_400(raw: bytes, param: str | None) -> errors.BadRequestError:
    with pytest.raises(errors.BadRequestError) as info:
        parse_embedding_request(raw)
    assert info.value.status == 400 and info.value.param == param, info.value.message
    return info.value


@pytest.mark.parametrize(("value", "batch"), [
    ("hello", ["hello"]),
    (["a", "b c"], ["a", "b c"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
])
def test_every_input_shape_becomes_a_batch(value: Any, batch: list) -> None:
    req = parse_embedding_request(body(input=value))
    assert not req.is_chat and embedding_inputs(req) == batch


@pytest.mark.parametrize("value", ["", [], [""], ["a", ""], [[]], [[1], []]])
def test_empty_inputs_are_rejected(value: Any) -> None:
    expect_400(body(input=value), "input")


@pytest.mark.parametrize("value", [["a", 1], [1, [2]], [-1], [[3, -2]]])
def test_mixed_or_negative_token_inputs_are_rejected(value: Any) -> None:
    expect_400(body(input=value), "input")


def test_exactly_one_of_input_and_messages() -> None:
    expect_400(body(), "input")
    expect_400(body(input="x", messages=USER_MESSAGES), "messages")
    req = parse_embedding_request(body(messages=USER_MESSAGES))
    assert req.is_chat and req.messages is not None and req.messages[0].content == "hi"


def test_messages_are_validated_like_chat() -> None:
    expect_400(body(messages=[]), "messages")
    expect_400(body(messages=[{"role": "user"}]), "messages[0].content")


def test_special_token_defaults_follow_the_request_kind() -> None:
    assert parse_embedding_request(body(input="x")).use_special_tokens is True
    assert parse_embedding_request(body(messages=USER_MESSAGES)).use_special_tokens is False
    assert parse_embedding_request(body(input="x", add_special_tokens=False)).use_special_tokens is False
    assert parse_embedding_request(body(messages=USER_MESSAGES, add_special_tokens=True)).use_special_tokens


def test_chat_options_defaults_and_exclusivity() -> None:
    req = parse_embedding_request(body(messages=USER_MESSAGES))
    assert req.use_generation_prompt is True and req.use_continue_final_message is False
    expect_400(body(messages=USER_MESSAGES, continue_final_message=True), "continue_final_message")
    req = parse_embedding_request(body(messages=USER_MESSAGES, continue_final_message=True,
                                       add_generation_prompt=False, chat_template="{{ x }}",
                                       chat_template_kwargs={"k": 1}))
    assert req.use_continue_final_message and not req.use_generation_prompt


@pytest.mark.parametrize("field", CHAT_ONLY_FIELDS)
def test_chat_only_fields_are_rejected_with_input(field: str) -> None:
    value = {"chat_template": "t", "chat_template_kwargs": {}}.get(field, False)
    expect_400(body(input="x", **{field: value}), field)


@pytest.mark.parametrize(("fields", "param"), [
    ({"dimensions": 384}, "dimensions"),
    ({"priority": 1}, "priority"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"input_type": "query"}, "input_type"),  # unknown field
    ({"add_special_tokens": "yes"}, "add_special_tokens"),
])
def test_rejected_fields_are_named(fields: dict, param: str) -> None:
    expect_400(body(input="x", **fields), param)


def test_accepted_extras() -> None:
    req = parse_embedding_request(body(input="x", user="u", additional_data={"a": [1]}, priority=0,
                                       truncate_prompt_tokens=3, encoding_format="base64"))
    assert (req.truncate_prompt_tokens, req.encoding_format) == (3, "base64")


def test_float_encoding_is_a_plain_list() -> None:
    assert encode_embedding([0.5, -2.0, 0.25], "float") == [0.5, -2.0, 0.25]
    assert encode_embedding(np.array([1.5, 3.0], dtype=np.float64), "float") == [1.5, 3.0]


def test_base64_round_trips_through_the_openai_client_decoding() -> None:
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    encoded = encode_embedding(vector, "base64")
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="float32")  # what openai-python does
    np.testing.assert_array_equal(decoded, vector)
    assert len(base64.b64decode(encoded)) == 4 * 384
    assert base64.b64decode(encode_embedding([1.0], "base64")) == b"\x00\x00\x80\x3f"  # little-endian


def test_float32_tensors_encode_like_arrays() -> None:
    vector = torch.linspace(-1, 1, 7)
    decoded = np.frombuffer(base64.b64decode(encode_embedding(vector, "base64")), dtype="float32")
    np.testing.assert_array_equal(decoded, vector.numpy())
    assert encode_embedding(vector, "float") == vector.tolist()


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_response_parses_as_openai_create_embedding_response(fmt: str) -> None:
    vectors = [[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0]]
    response = embedding_response("minilm", vectors, fmt, prompt_tokens=11)  # type: ignore[arg-type]
    payload = json.loads(msgspec.json.encode(response))
    assert payload["object"] == "list" and payload["id"].startswith("embd-")
    assert payload["usage"] == {"prompt_tokens": 11, "total_tokens": 11}
    for data in payload["data"]:
        assert isinstance(data["embedding"], str if fmt == "base64" else list)
        if fmt == "base64":  # openai-python decodes base64 before validating the model
            data["embedding"] = np.frombuffer(base64.b64decode(data["embedding"]), dtype="float32").tolist()
    parsed = CreateEmbeddingResponse.model_validate(payload)
    assert [d.index for d in parsed.data] == [0, 1] and parsed.data[0].object == "embedding"
    for data, expected in zip(parsed.data, vectors, strict=True):
        np.testing.assert_allclose(data.embedding, expected, rtol=1e-7)


def test_request_struct_forbids_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body(input="x", bogus=1), type=EmbeddingRequest)
