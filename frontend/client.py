"""EngineClient: the frontend's side of the process group.

Requests go to the engine core's input socket; results come back from the
detokenizer and are routed to one asyncio queue per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio

from engine_core.messages import Codec
from engine_core.messages.engine_input import AbortRequest, AddRequest, EmbedRequest, EngineInput, Ping
from engine_core.messages.engine_output import EmbeddingResult, EmbeddingResults, EngineStats, Pong
from engine_core.messages.frontend_input import FrontendInput, RequestOutput, RequestOutputs

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class EngineClient:
    def __init__(self, engine_input_path: str, frontend_input_path: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.to_engine = self.ctx.socket(zmq.PUSH)
        self.to_engine.connect(f"ipc://{engine_input_path}")
        self.from_detokenizer = self.ctx.socket(zmq.PULL)
        self.from_detokenizer.bind(f"ipc://{frontend_input_path}")
        self.engine_codec = Codec(EngineInput)
        self.output_codec = Codec(FrontendInput)
        self.queues: dict[str, asyncio.Queue[RequestOutput]] = {}
        self.pongs: dict[int, asyncio.Future[EngineStats]] = {}
        self.embeddings: dict[str, asyncio.Future[EmbeddingResult]] = {}
        self._ping_seq = itertools.count()
        self.num_aborted = 0  # requests whose consumer left before they finished
        self._reader: asyncio.Task | None = None
        self.handlers = {RequestOutputs: self._route_outputs, EmbeddingResults: self._resolve_embeddings,
                         Pong: self._resolve_pong}

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.to_engine.close(linger=0)
        self.from_detokenizer.close(linger=0)
        self.ctx.term()

    async def _read_loop(self) -> None:
        while True:
            msg = self.output_codec.decode(await self.from_detokenizer.recv())
            self.handlers[type(msg)](msg)

    def _route_outputs(self, msg: RequestOutputs) -> None:
        for output in msg.outputs:
            queue = self.queues.get(output.request_id)
            if queue is not None:  # None: the client already went away
                queue.put_nowait(output)

    def _resolve_embeddings(self, msg: EmbeddingResults) -> None:
        for result in msg.results:
            future = self.embeddings.pop(result.request_id, None)
            if future is not None and not future.done():  # None: the client already went away
                future.set_result(result)

    def _resolve_pong(self, msg: Pong) -> None:
        future = self.pongs.pop(msg.seq, None)
        if future is not None and not future.done():
            future.set_result(msg.stats)

    async def _send(self, msg) -> None:
        await self.to_engine.send(self.engine_codec.encode(msg))

    async def ping(self, timeout: float) -> EngineStats:
        """Round trip engine -> detokenizer -> here; raises EngineDeadError on timeout."""
        seq = next(self._ping_seq)
        future: asyncio.Future[EngineStats] = asyncio.get_running_loop().create_future()
        self.pongs[seq] = future
        await self._send(Ping(seq=seq))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise EngineDeadError(f"the engine did not answer within {timeout:.0f} s") from exc
        finally:
            self.pongs.pop(seq, None)

    async def generate(self, request: AddRequest) -> AsyncIterator[RequestOutput]:
        """Yields the request's outputs until it finishes. If the consumer stops
        early (client disconnect, cancellation), the engine aborts the request."""
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.queues[request.request_id] = queue
        finished = False
        try:
            await self._send(request)
            while not finished:
                output = await queue.get()
                finished = output.finish_reason is not None
                yield output
        finally:
            self.queues.pop(request.request_id, None)
            if not finished:
                await self.abort(request.request_id)

    async def embed(self, request_id: str, prompt_token_ids: list[int]) -> EmbeddingResult:
        """One embedding; if the caller is cancelled first, the engine drops the request."""
        future: asyncio.Future[EmbeddingResult] = asyncio.get_running_loop().create_future()
        self.embeddings[request_id] = future
        # Not future.done(): cancelling the awaiting task cancels the future too.
        answered = False
        try:
            await self._send(EmbedRequest(request_id, prompt_token_ids))
            result = await future
            answered = True
            return result
        finally:
            self.embeddings.pop(request_id, None)
            if not answered:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        logger.info("aborting request %s", request_id)
        self.num_aborted += 1
        await self._send(AbortRequest(request_ids=[request_id]))
