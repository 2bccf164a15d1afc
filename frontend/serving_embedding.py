"""POST /v1/embeddings: tokenize each input, one engine request per input, one response."""

from __future__ import annotations

import asyncio

from sanic import Request

from frontend.embedding_protocol import (
    EmbeddingRequest,
    embedding_inputs,
    embedding_response,
    parse_embedding_request,
)
from frontend.errors import bad_request
from frontend.protocol import random_uuid
from frontend.serving_chat import render_chat_prompt
from frontend.serving_common import json_response
from frontend.state import ServerState


async def create_embedding(state: ServerState, http: Request):
    req = parse_embedding_request(http.body)
    state.check_model(req.model)
    prompts = [fit_prompt(ids, req.truncate_prompt_tokens, state.max_model_len)
               for ids in tokenize_inputs(state, req)]
    request_id = random_uuid()
    # Every input is its own engine request, so the engine batches them with other clients'.
    # Cancelling this handler cancels each embed(), which aborts its request in the engine.
    results = await asyncio.gather(*(state.client.embed(f"embd-{request_id}-{i}", ids)
                                     for i, ids in enumerate(prompts)))
    if any(not r.embedding for r in results):
        raise bad_request("The engine refused an input: empty or longer than the model's maximum.", "input")
    prompt_tokens = sum(r.num_prompt_tokens for r in results)
    return json_response(embedding_response(req.model, [r.embedding for r in results],
                                            req.encoding_format, prompt_tokens))


def tokenize_inputs(state: ServerState, req: EmbeddingRequest) -> list[list[int]]:
    """One token-id list per embedding to return: texts are tokenized, token ids are checked
    against the vocabulary, and ``messages`` are rendered through the chat template."""
    if req.is_chat:
        return [render_chat_prompt(
            state.tokenizer, req.messages or [], add_generation_prompt=req.use_generation_prompt,
            continue_final_message=req.use_continue_final_message, chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs, add_special_tokens=req.use_special_tokens)]
    prompts = []
    for item in embedding_inputs(req):
        if isinstance(item, str):
            prompts.append(state.tokenizer.encode(item, add_special_tokens=req.use_special_tokens))
            continue
        state.check_vocab(item, "input")
        prompts.append(list(item))
    return prompts


def fit_prompt(token_ids: list[int], truncate_prompt_tokens: int | None, max_model_len: int) -> list[int]:
    """Keeps the last ``truncate_prompt_tokens`` tokens if asked, then checks the length."""
    if truncate_prompt_tokens is not None:
        token_ids = token_ids[-truncate_prompt_tokens:]
    if not token_ids:
        raise bad_request("An input has no tokens after tokenization.", "input")
    if len(token_ids) > max_model_len:
        raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, you "
                          f"requested {len(token_ids)} tokens in the input for embedding generation. "
                          "Please reduce the length of the input.", "input")
    return token_ids
