"""The embedding path outside the model: wire types, the detokenizer's pass-through,
EngineClient.embed (routing, abort on cancel) and prompt fitting."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from detokenizer.process import Detokenizer
from engine_core.messages import Codec
from engine_core.messages.engine_input import AbortRequest, EmbedRequest, EngineInput
from engine_core.messages.engine_output import EmbeddingResult, EmbeddingResults, EngineOutput
from engine_core.messages.frontend_input import FrontendInput
from frontend.client import EngineClient
from frontend.errors import BadRequestError
from frontend.serving_embedding import fit_prompt

pytestmark = pytest.mark.unit

RESULTS = EmbeddingResults([EmbeddingResult("a", [0.25, -1.5], 3), EmbeddingResult("b", [2.0, 0.0], 7)])


def test_embedding_messages_round_trip_on_their_channels() -> None:
    request = EmbedRequest("r1", [101, 7592, 102])
    assert Codec(EngineInput).decode(Codec(EngineInput).encode(request)) == request
    for union in (EngineOutput, FrontendInput):
        codec = Codec(union)
        assert codec.decode(codec.encode(RESULTS)) == RESULTS


def test_detokenizer_forwards_embedding_results_unchanged() -> None:
    detokenizer = Detokenizer(SimpleNamespace(eos_token_id=None))
    outgoing, to_abort = detokenizer.handle(RESULTS)
    assert outgoing == [RESULTS] and to_abort == []
    assert detokenizer.num_requests == 0


class RecordingClient(EngineClient):
    """EngineClient whose engine socket is a list."""

    def __init__(self, tmp_path) -> None:
        super().__init__(str(tmp_path / "engine_input"), str(tmp_path / "frontend_input"))
        self.sent: list[object] = []

    async def _send(self, msg) -> None:
        self.sent.append(msg)


def test_embed_returns_its_own_result(tmp_path) -> None:
    async def scenario() -> tuple[EmbeddingResult, EmbeddingResult, list[object]]:
        client = RecordingClient(tmp_path)
        tasks = [asyncio.create_task(client.embed(rid, [1, 2])) for rid in ("a", "b")]
        await asyncio.sleep(0)
        client._resolve_embeddings(RESULTS)
        a, b = await asyncio.gather(*tasks)
        await client.close()
        return a, b, client.sent

    a, b, sent = asyncio.run(scenario())
    assert (a, b) == tuple(RESULTS.results)
    assert sent == [EmbedRequest("a", [1, 2]), EmbedRequest("b", [1, 2])]


def test_cancelled_embed_aborts_the_engine_request(tmp_path) -> None:
    async def scenario() -> tuple[list[object], dict]:
        client = RecordingClient(tmp_path)
        task = asyncio.create_task(client.embed("gone", [5]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        client._resolve_embeddings(EmbeddingResults([EmbeddingResult("gone", [1.0], 1)]))  # late: dropped
        await client.close()
        return client.sent, client.embeddings

    sent, pending = asyncio.run(scenario())
    assert sent == [EmbedRequest("gone", [5]), AbortRequest(request_ids=["gone"])]
    assert pending == {}


def test_fit_prompt_keeps_the_last_tokens_and_checks_the_length() -> None:
    assert fit_prompt([1, 2, 3, 4, 5], 2, max_model_len=4) == [4, 5]
    assert fit_prompt([1, 2, 3], 10, max_model_len=4) == [1, 2, 3]
    assert fit_prompt([1, 2, 3, 4], None, max_model_len=4) == [1, 2, 3, 4]
    with pytest.raises(BadRequestError, match="maximum context length is 4 tokens.*requested 5 tokens"):
        fit_prompt([1, 2, 3, 4, 5], None, max_model_len=4)
    with pytest.raises(BadRequestError, match="no tokens"):
        fit_prompt([], None, max_model_len=4)
