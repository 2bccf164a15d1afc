"""POST /v1/chat/completions: chat template, one engine request, chat-shaped output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jinja2
from sanic import Request

from engine_core.messages.engine_input import AddRequest
from frontend.errors import bad_request
from frontend.protocol import ChatCompletionRequest, ChatMessage, parse_request
from frontend.responses import (
    ChatChoice,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    ChatStreamChoice,
    DeltaMessage,
    chat_logprobs,
    now,
    usage_info,
)
from frontend.serving_common import collect, engine_request, json_response, merged_outputs, stream_sse
from frontend.state import ServerState

RESPONSE_ROLE = "assistant"


async def create_chat_completion(state: ServerState, http: Request):
    req = parse_request(http.body, ChatCompletionRequest)
    state.check_model(req.model)
    prompt_ids = render_chat_prompt(
        state.tokenizer, req.messages, add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message, chat_template=req.chat_template,
        chat_template_kwargs=req.chat_template_kwargs, add_special_tokens=req.add_special_tokens)
    response_id = f"chatcmpl-{req.request_id}"
    request = engine_request(state, req, response_id, prompt_ids)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await stream_sse(http, _stream(state, request, response_id, req.model, include_usage))
    result = await collect(state, request)
    choice = ChatChoice(
        index=0, message=ChatResponseMessage(role=RESPONSE_ROLE, content=result.text),
        logprobs=chat_logprobs(result.logprobs) if req.logprobs else None,
        finish_reason=result.finish_reason, stop_reason=result.stop_reason,
    )
    return json_response(ChatCompletionResponse(
        id=response_id, created=now(), model=req.model, choices=[choice],
        usage=usage_info(len(prompt_ids), len(result.token_ids)),
    ))


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


def render_chat_prompt(tokenizer: Any, messages: list[ChatMessage], *, add_generation_prompt: bool,
                       continue_final_message: bool, chat_template: str | None,
                       chat_template_kwargs: dict[str, Any] | None, add_special_tokens: bool) -> list[int]:
    """Chat template of the tokenizer (or the request's own), then token ids.
    Shared by chat completions and chat-style embedding requests."""
    try:
        text = tokenizer.apply_chat_template(
            [_message_dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            chat_template=chat_template,
            **(chat_template_kwargs or {}),
        )
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise bad_request(f"Could not apply the chat template: {exc}", "messages") from None
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


async def _stream(state: ServerState, request: AddRequest, response_id: str, model: str,
                  include_usage: bool) -> AsyncIterator[ChatCompletionStreamResponse]:
    created = now()

    def chunk(choices: list[ChatStreamChoice], **extra: Any) -> ChatCompletionStreamResponse:
        return ChatCompletionStreamResponse(id=response_id, created=created, model=model, choices=choices,
                                            **extra)

    yield chunk([ChatStreamChoice(index=0, delta=DeltaMessage(role=RESPONSE_ROLE, content=""))])
    completion_tokens = 0
    async for _, output in merged_outputs(state, [request]):
        completion_tokens += len(output.token_ids)
        if output.text or output.logprobs or output.finish_reason is not None:
            yield chunk([ChatStreamChoice(
                index=0, delta=DeltaMessage(content=output.text or None),
                logprobs=chat_logprobs(output.logprobs) if output.logprobs else None,
                finish_reason=output.finish_reason, stop_reason=output.stop_reason,
            )])
    if include_usage:
        yield chunk([], usage=usage_info(len(request.prompt_token_ids), completion_tokens))
