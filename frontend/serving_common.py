"""What completions and chat share: engine requests from prompts, collecting a
finished result, merging several prompts' streams, and writing SSE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sanic import Request
from sanic.response import HTTPResponse

from engine_core.messages.engine_input import AddRequest
from engine_core.messages.frontend_input import PositionLogprobs, RequestOutput
from frontend.errors import as_api_error, bad_request
from frontend.protocol import (
    GenerationRequest,
    check_context_length,
    requested_max_tokens,
    to_detokenize_params,
    to_sampling_params,
)
from frontend.responses import SSE_DONE, encode_json, sse_error, sse_event
from frontend.state import ServerState

logger = logging.getLogger(__name__)


def engine_request(state: ServerState, req: GenerationRequest, request_id: str,
                   prompt_ids: list[int]) -> AddRequest:
    """Checks the prompt against the vocabulary and the context length, then builds the request."""
    state.check_vocab(prompt_ids, "prompt")
    max_tokens = requested_max_tokens(req)
    check_context_length(len(prompt_ids), max_tokens, state.max_model_len)
    sampling = to_sampling_params(req, default_max_tokens=state.max_model_len - len(prompt_ids))
    return AddRequest(request_id, prompt_ids, sampling, to_detokenize_params(req))


@dataclass
class Collected:
    """A whole result of one prompt, gathered from its outputs."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_prompt_tokens: int = 0

    def add(self, output: RequestOutput) -> None:
        self.text += output.text
        self.token_ids.extend(output.token_ids)
        self.logprobs.extend(output.logprobs)
        self.num_prompt_tokens = output.num_prompt_tokens or self.num_prompt_tokens
        if output.finish_reason is not None:
            self.finish_reason = output.finish_reason
            self.stop_reason = output.stop_reason


async def collect(state: ServerState, request: AddRequest) -> Collected:
    result = Collected(num_prompt_tokens=len(request.prompt_token_ids))
    async for output in state.client.generate(request):
        result.add(output)
    if result.finish_reason == "error":
        raise bad_request("The request can never be scheduled: prompt and output do not fit in the KV cache.",
                          "max_tokens")
    state.metrics.record(result.finish_reason or "abort", result.num_prompt_tokens, len(result.token_ids))
    return result


async def collect_all(state: ServerState, requests: list[AddRequest]) -> list[Collected]:
    return list(await asyncio.gather(*(collect(state, r) for r in requests)))


async def merged_outputs(state: ServerState, requests: list[AddRequest]
                         ) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several concurrent requests as (prompt index, output), in arrival order.
    Leaving early cancels the feeders, which aborts their requests in the engine."""
    queue: asyncio.Queue[tuple[int, RequestOutput] | BaseException] = asyncio.Queue()

    async def feed(index: int, request: AddRequest) -> None:
        try:
            generated = 0
            async for output in state.client.generate(request):
                generated += len(output.token_ids)
                if output.finish_reason is not None:
                    state.metrics.record(output.finish_reason, len(request.prompt_token_ids), generated)
                await queue.put((index, output))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced to the consumer, which ends the stream
            await queue.put(exc)

    feeders = [asyncio.create_task(feed(i, r)) for i, r in enumerate(requests)]
    remaining = len(requests)
    try:
        while remaining:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item[1].finish_reason is not None:
                remaining -= 1
            yield item
    finally:
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)


async def stream_sse(request: Request, events: AsyncIterator[object]) -> None:
    """Writes each event as ``data: {...}``; an error mid-stream becomes an error event.
    Always ends with ``data: [DONE]`` unless the client is gone."""
    response = await request.respond(content_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
    try:
        async for event in events:
            await response.send(sse_event(event))
    except asyncio.CancelledError:
        logger.info("client disconnected mid-stream")
        raise
    except Exception as exc:  # the status line is gone already: report in-band
        await response.send(sse_error(as_api_error(exc)))
    await response.send(SSE_DONE)
    await response.eof()


def json_response(payload: object) -> HTTPResponse:
    return HTTPResponse(encode_json(payload), content_type="application/json")
