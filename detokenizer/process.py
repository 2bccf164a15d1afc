"""The detokenizer process: engine core step outputs in, request text out.

``Detokenizer`` holds all logic and no sockets, so tests drive it in-process;
``run_detokenizer`` is the thin ZeroMQ loop around it.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import zmq

from detokenizer.incremental import IncrementalDetokenizer
from detokenizer.stop import StopChecker
from engine_core.messages import Codec
from engine_core.messages.engine_input import AbortRequest, EngineInput
from engine_core.messages.engine_output import (
    EmbeddingResults,
    EngineOutput,
    Logprobs,
    NewRequest,
    Pong,
    RequestDelta,
    StepOutputs,
)
from engine_core.messages.frontend_input import (
    FrontendInput,
    PositionLogprobs,
    RequestOutput,
    RequestOutputs,
    TokenLogprob,
)
from engine_core.request import FinishReason
from engine_core.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

POLL_INTERVAL_MS = 100  # how quickly the loop notices SIGTERM / SIGINT


class _RequestState:
    __slots__ = ("detokenizer", "stop_checker", "token_text", "include_stop_str")

    def __init__(
        self,
        detokenizer: IncrementalDetokenizer,
        stop_checker: StopChecker,
        token_text: Callable[[int], str],
        include_stop_str: bool,
    ) -> None:
        self.detokenizer = detokenizer
        self.stop_checker = stop_checker
        self.token_text = token_text  # text attached to logprobs ("" when not asked for)
        self.include_stop_str = include_stop_str


def _no_text(token_id: int) -> str:
    return ""


class Detokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._eos_token_id: int | None = tokenizer.eos_token_id
        self._requests: dict[str, _RequestState] = {}
        self._token_texts: dict[int, str] = {}  # single-token texts for logprobs, vocab-bounded
        self._handlers: dict[type, Callable[[Any], tuple[list[FrontendInput], list[str]]]] = {
            StepOutputs: self._handle_step,
            # Nothing to detokenize: pongs and embeddings pass through as they are.
            Pong: self._forward,
            EmbeddingResults: self._forward,
        }

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def handle(self, msg: EngineOutput) -> tuple[list[FrontendInput], list[str]]:
        """Returns (messages for the frontend, request ids the engine core must abort)."""
        return self._handlers[type(msg)](msg)

    def _forward(self, msg: Pong | EmbeddingResults) -> tuple[list[FrontendInput], list[str]]:
        return [msg], []

    def _handle_step(self, step: StepOutputs) -> tuple[list[FrontendInput], list[str]]:
        for new_request in step.new_requests:
            self._requests[new_request.request_id] = self._new_state(new_request)
        outputs: list[RequestOutput] = []
        stopped_by_string: list[str] = []
        for delta in step.deltas:
            state = self._requests.get(delta.request_id)
            if state is None:
                continue  # ended by a stop string; the engine core produced this before our abort
            output = self._process_delta(state, delta)
            outputs.append(output)
            if output.finish_reason is not None:
                del self._requests[delta.request_id]
                if delta.finish_reason < 0:
                    stopped_by_string.append(delta.request_id)
        return ([RequestOutputs(outputs)] if outputs else []), stopped_by_string

    def _new_state(self, new_request: NewRequest) -> _RequestState:
        params = new_request.detokenize
        return _RequestState(
            detokenizer=IncrementalDetokenizer(
                self._tokenizer,
                new_request.prompt_token_ids,
                skip_special_tokens=params.skip_special_tokens,
                spaces_between_special_tokens=params.spaces_between_special_tokens,
            ),
            stop_checker=StopChecker(params.stop, params.include_stop_str_in_output),
            token_text=self._token_text if params.logprobs else _no_text,
            include_stop_str=params.include_stop_str_in_output,
        )

    def _process_delta(self, state: _RequestState, delta: RequestDelta) -> RequestOutput:
        engine_finish = FinishReason(delta.finish_reason) if delta.finish_reason >= 0 else None
        text_token_ids = delta.new_token_ids
        # Like a stop string, the EOS / stop token that ended the request is not shown.
        if engine_finish == FinishReason.STOP and not state.include_stop_str:
            text_token_ids = text_token_ids[:-1]
        text, stop_string = state.stop_checker.check(state.detokenizer.add_tokens(text_token_ids))
        if engine_finish is not None and stop_string is None:
            tail, stop_string = state.stop_checker.check(state.detokenizer.flush())
            text += tail if stop_string is not None else tail + state.stop_checker.flush()
        output = RequestOutput(
            request_id=delta.request_id,
            text=text,
            token_ids=delta.new_token_ids,
            logprobs=self._position_logprobs(state.token_text, delta.new_token_ids, delta.logprobs),
            num_prompt_tokens=delta.num_prompt_tokens,
            num_cached_tokens=delta.num_cached_tokens,
        )
        if stop_string is not None:
            output.finish_reason, output.stop_reason = "stop", stop_string
        elif engine_finish is not None:
            output.finish_reason = engine_finish.openai_name
            output.stop_reason = self._stop_token(engine_finish, delta.new_token_ids)
        return output

    def _stop_token(self, finish: FinishReason, token_ids: list[int]) -> int | None:
        """The stop token id that ended the request; None for EOS, like OpenAI."""
        if finish != FinishReason.STOP or not token_ids or token_ids[-1] == self._eos_token_id:
            return None
        return token_ids[-1]

    @staticmethod
    def _position_logprobs(
        token_text: Callable[[int], str], token_ids: list[int], logprobs: list[Logprobs]
    ) -> list[PositionLogprobs]:
        if not logprobs:  # none asked for
            return []
        return [
            PositionLogprobs(
                sampled=TokenLogprob(token_id, token_text(token_id), position.sampled),
                top=[
                    TokenLogprob(top_id, token_text(top_id), top_logprob)
                    for top_id, top_logprob in zip(position.top_ids, position.top_logprobs, strict=True)
                ],
            )
            for token_id, position in zip(token_ids, logprobs, strict=True)
        ]

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_texts[token_id] = text
        return text


def _limit_torch_threads() -> None:
    # transformers may import torch; this process must not spin up compute threads.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def run_detokenizer(
    engine_output_path: str, frontend_input_path: str, engine_input_path: str, tokenizer_path: str
) -> None:
    """Serves until SIGTERM / SIGINT: engine core outputs in, frontend inputs out."""
    context = zmq.Context()
    engine_output = context.socket(zmq.PULL)
    frontend_input = context.socket(zmq.PUSH)
    engine_input = context.socket(zmq.PUSH)
    sockets = (engine_output, frontend_input, engine_input)
    for sock in sockets:
        sock.setsockopt(zmq.LINGER, 0)
    try:
        # Bind before the slow tokenizer load, so early messages queue up instead of failing.
        engine_output.bind(f"ipc://{engine_output_path}")
        frontend_input.connect(f"ipc://{frontend_input_path}")
        engine_input.connect(f"ipc://{engine_input_path}")
        detokenizer = Detokenizer(load_tokenizer(tokenizer_path))
        _limit_torch_threads()
        _serve(detokenizer, engine_output, frontend_input, engine_input)
    finally:
        for sock in sockets:
            sock.close()
        context.term()


def _serve(
    detokenizer: Detokenizer, engine_output: zmq.Socket, frontend_input: zmq.Socket, engine_input: zmq.Socket
) -> None:
    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    engine_output_codec, frontend_codec, engine_input_codec = (
        Codec(EngineOutput), Codec(FrontendInput), Codec(EngineInput)
    )
    logger.info("detokenizer ready")
    while not stop_requested:
        if not engine_output.poll(POLL_INTERVAL_MS):
            continue
        outgoing, to_abort = detokenizer.handle(engine_output_codec.decode(engine_output.recv()))
        # Abort first: the engine core frees the stopped requests' KV blocks sooner.
        if to_abort:
            engine_input.send(engine_input_codec.encode(AbortRequest(request_ids=to_abort)))
        for msg in outgoing:
            frontend_input.send(frontend_codec.encode(msg))
    logger.info("detokenizer stopping")
