"""The real process group on SmolLM2, driven by the official openai client."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

PROMPTS = [
    "The capital of Germany is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "1, 2, 3, 4,",
]


def test_models_lists_default_name(client) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]
    assert models[0].object == "model"


def test_chat_answers_paris(client, model_name) -> None:
    reply = client.chat.completions.create(
        model=model_name, temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_accepts_text_parts(client, model_name) -> None:
    as_string = client.chat.completions.create(
        model=model_name, temperature=0, max_tokens=12,
        messages=[{"role": "user", "content": "Name a colour."}])
    as_parts = client.chat.completions.create(
        model=model_name, temperature=0, max_tokens=12,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}])
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content


def test_completions_with_a_list_of_prompts(client, model_name) -> None:
    reply = client.completions.create(model=model_name, prompt=PROMPTS, max_tokens=8, temperature=0)
    assert reply.object == "text_completion"
    assert [c.index for c in reply.choices] == list(range(len(PROMPTS)))
    singles = [client.completions.create(model=model_name, prompt=p, max_tokens=8, temperature=0)
               for p in PROMPTS]
    assert [c.text for c in reply.choices] == [s.choices[0].text for s in singles]
    assert reply.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert reply.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)


def test_completions_with_token_ids(client, model_name) -> None:
    as_text = client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=6, temperature=0)
    ids = [[504, 3575, 282, 4843, 314]]
    as_ids = client.completions.create(model=model_name, prompt=ids, max_tokens=6, temperature=0)
    assert as_ids.usage.prompt_tokens == 5
    assert as_text.choices[0].text
    assert as_ids.choices[0].text


def test_streamed_completion_equals_plain(client, model_name) -> None:
    kwargs = dict(model=model_name, prompt=PROMPTS[2], max_tokens=32, temperature=0)
    plain = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain
    assert chunks[-1].choices[0].finish_reason == "length"


def test_streamed_chat_equals_plain_and_starts_with_role(client, model_name) -> None:
    kwargs = dict(model=model_name, max_tokens=32, temperature=0,
                  messages=[{"role": "user", "content": "Write one sentence about the sea."}])
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert text == plain
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_raw_sse_ends_with_done(server, model_name) -> None:
    body = {"model": model_name, "prompt": "Hi", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    json.loads(events[0][len("data: "):])


def test_concurrent_greedy_equals_sequential(client, model_name) -> None:
    prompts = [f"Question {i}: what is {i} plus {i + 1}? Answer:" for i in range(16)]

    def run(prompt: str) -> str:
        return client.completions.create(model=model_name, prompt=prompt, max_tokens=24,
                                          temperature=0).choices[0].text

    sequential = [run(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        concurrent_results = list(pool.map(run, prompts))
    assert concurrent_results == sequential


def test_seeded_sampling_is_reproducible(client, model_name) -> None:
    kwargs = dict(model=model_name, prompt=PROMPTS[2], max_tokens=16, temperature=1.0, seed=1234)
    first = client.completions.create(**kwargs).choices[0].text
    second = client.completions.create(**kwargs).choices[0].text
    assert first == second


def test_stop_string_ends_output(client, model_name) -> None:
    reply = client.completions.create(model=model_name, prompt="1, 2, 3, 4,", max_tokens=30,
                                      temperature=0, stop=["7"])
    choice = reply.choices[0]
    assert "7" not in choice.text
    assert choice.finish_reason == "stop"


def _post(server, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.base_url}{path}", content=content,
                      headers={"content-type": "application/json", **headers}, timeout=60)


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    ({"prompt": "hi"}, "model"),
    ({"model": "SmolLM2-135M-Instruct", "prompt": 5}, "prompt"),
    ({"model": "SmolLM2-135M-Instruct", "prompt": "hi", "temperature": 9}, "temperature"),
    ({"model": "SmolLM2-135M-Instruct", "prompt": "hi", "top_p": 0}, "top_p"),
    ({"model": "SmolLM2-135M-Instruct", "prompt": "hi", "bogus_field": 1}, "bogus_field"),
    ({"model": "SmolLM2-135M-Instruct", "prompt": ""}, "prompt"),
    ({"model": "SmolLM2-135M-Instruct", "prompt": [[1, 999999]]}, "prompt"),
])
def test_bad_completion_requests_get_400(server, client, model_name, body, param) -> None:
    error = _assert_openai_error(_post(server, "/v1/completions", body), 400)
    if param is not None:
        assert error["param"] == param
    assert client.completions.create(model=model_name, prompt="ok", max_tokens=2).choices


def test_unknown_model_is_404(server) -> None:
    error = _assert_openai_error(
        _post(server, "/v1/chat/completions",
              {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}), 404)
    assert "gpt-9" in error["message"]


def test_context_overflow_names_the_numbers(server, client, model_name) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_name, prompt="hello", max_tokens=10_000_000)
    assert "maximum context length" in str(info.value)
    assert "10000000" in str(info.value)


def test_bad_chat_messages_get_400(server) -> None:
    response = _post(server, "/v1/chat/completions",
                     {"model": "SmolLM2-135M-Instruct", "messages": [{"content": "no role"}]})
    _assert_openai_error(response, 400)


def test_unknown_route_is_openai_shaped_404(server) -> None:
    _assert_openai_error(httpx.get(f"{server.base_url}/v1/nothing-here", timeout=10), 404)


def test_request_id_is_echoed(server) -> None:
    response = httpx.get(f"{server.base_url}/v1/models", headers={"X-Request-Id": "abc123"}, timeout=10)
    assert response.headers["x-request-id"] == "abc123"


def test_health_is_empty_200(server) -> None:
    response = httpx.get(f"{server.base_url}/health", timeout=10)
    assert response.status_code == 200 and response.content == b""
