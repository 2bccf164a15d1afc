"""POST /v1/completions: one engine request per prompt, merged into one response."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from sanic import Request

from engine_core.messages.engine_input import AddRequest
from frontend.protocol import CompletionRequest, completion_prompts, parse_request
from frontend.responses import (
    CompletionChoice,
    CompletionResponse,
    CompletionStreamResponse,
    completion_logprobs,
    now,
    usage_info,
)
from frontend.serving_common import collect_all, engine_request, json_response, merged_outputs, stream_sse
from frontend.state import ServerState


async def create_completion(state: ServerState, http: Request):
    req = parse_request(http.body, CompletionRequest)
    state.check_model(req.model)
    response_id = f"cmpl-{uuid.uuid4().hex}"
    encode = state.tokenizer.encode
    prompts = [p if isinstance(p, list) else encode(p, add_special_tokens=req.add_special_tokens)
               for p in completion_prompts(req)]
    requests = [engine_request(state, req, f"{response_id}-{i}", ids) for i, ids in enumerate(prompts)]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await stream_sse(http, _stream(state, requests, response_id, req.model, include_usage))
    results = await collect_all(state, requests)
    choices = [CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason,
                                stop_reason=r.stop_reason,
                                logprobs=completion_logprobs(r.logprobs) if r.logprobs else None)
               for i, r in enumerate(results)]
    usage = usage_info(sum(r.num_prompt_tokens for r in results), sum(len(r.token_ids) for r in results))
    return json_response(CompletionResponse(id=response_id, created=now(), model=req.model,
                                            choices=choices, usage=usage))


async def _stream(state: ServerState, requests: list[AddRequest], response_id: str, model: str,
                  include_usage: bool) -> AsyncIterator[CompletionStreamResponse]:
    created = now()
    completion_tokens = [0] * len(requests)
    text_offsets = [0] * len(requests)
    async for index, output in merged_outputs(state, requests):
        completion_tokens[index] += len(output.token_ids)
        logprobs = completion_logprobs(output.logprobs, text_offsets[index]) if output.logprobs else None
        text_offsets[index] += len(output.text)
        choice = CompletionChoice(index=index, text=output.text, logprobs=logprobs,
                                  finish_reason=output.finish_reason, stop_reason=output.stop_reason)
        yield CompletionStreamResponse(id=response_id, created=created, model=model, choices=[choice])
    if include_usage:
        usage = usage_info(sum(len(r.prompt_token_ids) for r in requests), sum(completion_tokens))
        yield CompletionStreamResponse(id=response_id, created=created, model=model, choices=[], usage=usage)
