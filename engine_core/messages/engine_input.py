"""Channel: frontend and detokenizer -> engine core."""

from __future__ import annotations

import msgspec

from engine_core.request import SamplingParams

_STRUCT = dict(array_like=True, omit_defaults=True, gc=False, tag=True)


class DetokenizeParams(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """How the detokenizer turns this request's tokens into text. The engine
    core only forwards it, so it reaches the detokenizer before any token."""

    stop: list[str] = []
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logprobs: bool = False  # attach the text of sampled and top tokens


class AddRequest(msgspec.Struct, **_STRUCT):
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    detokenize: DetokenizeParams


class EmbedRequest(msgspec.Struct, **_STRUCT):
    """One text to embed (served with --task embedding): no sampling, no detokenizing."""

    request_id: str
    prompt_token_ids: list[int]


class AbortRequest(msgspec.Struct, **_STRUCT):
    """Client gone, or a stop string found by the detokenizer."""

    request_ids: list[str]


class Ping(msgspec.Struct, **_STRUCT):
    """Travels engine -> detokenizer -> frontend as a Pong: proves all three answer."""

    seq: int


EngineInput = AddRequest | EmbedRequest | AbortRequest | Ping
