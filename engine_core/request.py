"""Request state inside the engine core. Torch-free: the scheduler imports it."""

from __future__ import annotations

import enum
import time

import msgspec


class FinishReason(enum.IntEnum):
    STOP = 0  # EOS, a stop token id, or (detokenizer) a stop string
    LENGTH = 1  # max_tokens or max_model_len reached
    ABORT = 2  # client gone or aborted by a stop string
    ERROR = 3  # the request can never be scheduled (too long for the cache)

    @property
    def openai_name(self) -> str:
        return ("stop", "length", "abort", "error")[self]


class SamplingParams(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Everything the engine core needs to sample one request.

    Validation happens in the frontend; the engine trusts these values.
    """

    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 disables
    min_p: float = 0.0
    seed: int | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs to return with each sampled token
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3


class Request:
    """One sequence being generated. The scheduler moves it between queues;
    the KV cache manager owns its blocks (keyed by ``request_id``)."""

    __slots__ = (
        "request_id", "prompt_token_ids", "sampling", "eos_token_id", "output_token_ids",
        "num_computed_tokens", "status", "finish_reason", "arrival_time", "max_total_tokens",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        eos_token_id: int | None,
        max_model_len: int,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling = sampling
        self.eos_token_id = eos_token_id
        self.output_token_ids: list[int] = []
        self.num_computed_tokens = 0
        self.status = RequestStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.arrival_time = time.monotonic()
        # Generation stops at whichever limit comes first.
        self.max_total_tokens = min(max_model_len, len(prompt_token_ids) + sampling.max_tokens)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens ``[start, end)`` of prompt + output."""
        num_prompt = len(self.prompt_token_ids)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt:end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - num_prompt]

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    def check_stop(self) -> FinishReason | None:
        """Called after a token is appended: EOS, stop token ids and length."""
        if self.num_tokens >= self.max_total_tokens:
            return FinishReason.LENGTH
        if len(self.output_token_ids) < self.sampling.min_tokens:
            return None
        last = self.output_token_ids[-1]
        if last == self.eos_token_id and not self.sampling.ignore_eos:
            return FinishReason.STOP
        if last in self.sampling.stop_token_ids:
            return FinishReason.STOP
        return None
