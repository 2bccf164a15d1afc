"""POST /v1/chat/completions: chat template, one engine request, chat-shaped output."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import jinja2
from sanic import Request

from engine_core.messages.engine_input import AddRequest
from engine_core.messages.frontend_input import PositionLogprobs, TokenLogprob
from frontend.errors import bad_request
from frontend.protocol import ChatCompletionRequest, ChatMessage, parse_request
from frontend.serving_common import collect, engine_request, json_response, merged_outputs, stream_sse
from frontend.state import ServerState

RESPONSE_ROLE = "assistant"


async def create_chat_completion(state: ServerState, http: Request):
    req = parse_request(http.body, ChatCompletionRequest)
    state.check_model(req.model)
    prompt_ids = render_chat_prompt(state, req)
    response_id = f"chatcmpl-{req.request_id}"
    request = engine_request(state, req, response_id, prompt_ids)
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await stream_sse(http, _stream_events(state, request, response_id, created, req.model,
                                                     include_usage))
    result = await collect(state, request)
    message = {"role": RESPONSE_ROLE, "content": result.text, "tool_calls": []}
    completion = len(result.token_ids)
    return json_response({
        "id": response_id, "object": "chat.completion", "created": created, "model": req.model,
        "choices": [{
            "index": 0, "message": message,
            "logprobs": chat_logprobs(result.logprobs) if req.logprobs else None,
            "finish_reason": result.finish_reason, "stop_reason": result.stop_reason,
        }],
        "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                  "total_tokens": len(prompt_ids) + completion},
    })


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):  # "string" content format: text parts joined by newlines
        content = "\n".join(part.text for part in content)
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": c.type,
                              "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in message.tool_calls]
    return out


def render_chat_prompt(state: ServerState, req: ChatCompletionRequest) -> list[int]:
    """Chat template of the tokenizer (or the request's own), then token ids."""
    try:
        text = state.tokenizer.apply_chat_template(
            [_message_dict(m) for m in req.messages],
            tokenize=False,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template=req.chat_template,
            **(req.chat_template_kwargs or {}),
        )
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise bad_request(f"Could not apply the chat template: {exc}", "messages") from None
    return state.tokenizer.encode(text, add_special_tokens=req.add_special_tokens)


def _token_entry(token: TokenLogprob) -> dict[str, Any]:
    return {"token": token.text, "logprob": token.logprob, "bytes": list(token.text.encode())}


def chat_logprobs(positions: list[PositionLogprobs]) -> dict[str, list]:
    return {"content": [{**_token_entry(p.sampled), "top_logprobs": [_token_entry(t) for t in p.top]}
                        for p in positions]}


async def _stream_events(state: ServerState, request: AddRequest, response_id: str, created: int,
                         model: str, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any] | None, **choice: Any) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": None, **choice}]
        return {"id": response_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices}

    yield chunk({"role": RESPONSE_ROLE, "content": ""})
    completion_tokens = 0
    async for _, output in merged_outputs(state, [request]):
        completion_tokens += len(output.token_ids)
        extra: dict[str, Any] = {}
        if output.logprobs:
            extra["logprobs"] = chat_logprobs(output.logprobs)
        if output.finish_reason is not None:
            extra.update(finish_reason=output.finish_reason, stop_reason=output.stop_reason)
        if output.text or extra:
            yield chunk({"content": output.text} if output.text else {}, **extra)
    if include_usage:
        prompt = len(request.prompt_token_ids)
        yield {**chunk(None), "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                                        "total_tokens": prompt + completion_tokens}}
