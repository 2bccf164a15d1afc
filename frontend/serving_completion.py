"""POST /v1/completions: one engine request per prompt, merged into one response."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sanic import Request

from engine_core.messages.frontend_input import PositionLogprobs
from frontend.protocol import CompletionRequest, completion_prompts, parse_request
from frontend.serving_common import (
    Collected,
    collect_all,
    engine_request,
    json_response,
    merged_outputs,
    stream_sse,
)
from frontend.state import ServerState


async def create_completion(state: ServerState, http: Request):
    req = parse_request(http.body, CompletionRequest)
    state.check_model(req.model)
    response_id = f"cmpl-{uuid.uuid4().hex}"
    encode = state.tokenizer.encode
    prompts = [p if isinstance(p, list) else encode(p, add_special_tokens=req.add_special_tokens)
               for p in completion_prompts(req)]
    requests = [engine_request(state, req, f"{response_id}-{i}", ids) for i, ids in enumerate(prompts)]
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _stream_events(state, requests, response_id, created, req.model, include_usage)
        return await stream_sse(http, events)
    results = await collect_all(state, requests)
    return json_response({
        "id": response_id, "object": "text_completion", "created": created, "model": req.model,
        "choices": [_choice(i, r.text, r.logprobs, r.finish_reason, r.stop_reason)
                    for i, r in enumerate(results)],
        "usage": _usage(results),
    })


def _choice(index: int, text: str, logprobs: list[PositionLogprobs], finish_reason: str | None,
            stop_reason: str | int | None) -> dict[str, Any]:
    return {
        "index": index, "text": text,
        "logprobs": completion_logprobs(logprobs) if logprobs else None,
        "finish_reason": finish_reason, "stop_reason": stop_reason,
    }


def _usage(results: list[Collected]) -> dict[str, int]:
    prompt = sum(r.num_prompt_tokens for r in results)
    completion = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_logprobs(positions: list[PositionLogprobs], offset: int = 0) -> dict[str, list]:
    """The legacy completions logprobs object: parallel lists per token."""
    tokens, token_logprobs, top, text_offset = [], [], [], []
    for position in positions:
        tokens.append(position.sampled.text)
        token_logprobs.append(position.sampled.logprob)
        top.append({t.text: t.logprob for t in position.top} if position.top else None)
        text_offset.append(offset)
        offset += len(position.sampled.text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
            "text_offset": text_offset}


async def _stream_events(state: ServerState, requests, response_id: str, created: int, model: str,
                         include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": response_id, "object": "text_completion", "created": created, "model": model,
                "choices": choices}

    completion_tokens = [0] * len(requests)
    text_offsets = [0] * len(requests)
    async for index, output in merged_outputs(state, requests):
        completion_tokens[index] += len(output.token_ids)
        choice = _choice(index, output.text, [], output.finish_reason, output.stop_reason)
        if output.logprobs:
            choice["logprobs"] = completion_logprobs(output.logprobs, text_offsets[index])
        text_offsets[index] += len(output.text)
        yield chunk([choice])
    if include_usage:
        prompt = sum(len(r.prompt_token_ids) for r in requests)
        completion = sum(completion_tokens)
        yield {**chunk([]), "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                      "total_tokens": prompt + completion}}
