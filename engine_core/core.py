"""EngineCore: the plain class (add / abort / step) and its thin process loop."""

from __future__ import annotations

import logging
import signal

import zmq

from engine_core.config import EngineConfig
from engine_core.embedding_core import EmbeddingCore
from engine_core.kv_cache_manager import KVCacheManager
from engine_core.messages import Codec
from engine_core.messages.engine_input import (
    AbortRequest,
    AddRequest,
    EmbedRequest,
    EngineInput,
    Ping,
)
from engine_core.messages.engine_output import (
    EngineOutput,
    EngineStats,
    Logprobs,
    NewRequest,
    Pong,
    RequestDelta,
    StepOutputs,
)
from engine_core.model_runner import ModelRunner
from engine_core.request import Request
from engine_core.sampler import SamplerOutput
from engine_core.scheduler import Scheduler, SchedulerOutput, StepResult
from engine_core.task import EMBEDDING, GENERATE

logger = logging.getLogger(__name__)

_IDLE_POLL_MS = 200


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        self.runner = ModelRunner(config.model, config.cache)
        kv = self.runner.kv_shape
        self.max_model_len = kv.max_model_len
        self.eos_token_id = self.runner.arch.eos_token_id
        self.kv_cache = KVCacheManager(kv.num_blocks, kv.block_size, config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.kv_cache, kv.max_model_len)
        self._new_requests: list[NewRequest] = []

    def add_request(self, msg: AddRequest) -> None:
        request = Request(msg.request_id, msg.prompt_token_ids, msg.sampling,
                          self.eos_token_id, self.max_model_len)
        self.runner.add_request(request)
        self.scheduler.add_request(request)
        self._new_requests.append(NewRequest(msg.request_id, msg.prompt_token_ids, msg.detokenize))

    def abort_requests(self, request_ids: list[str]) -> None:
        for request in self.scheduler.abort_requests(request_ids):
            self.runner.remove_request(request.request_id)

    def has_work(self) -> bool:
        return self.scheduler.has_unfinished_requests() or bool(self._new_requests)

    def step(self) -> StepOutputs:
        plan = self.scheduler.schedule()
        sampled = self.runner.execute(plan)
        results = self.scheduler.update(plan, sampled.token_ids if sampled else [])
        return self._step_outputs(plan, results, sampled)

    def stats(self) -> EngineStats:
        return EngineStats(
            max_model_len=self.max_model_len,
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_free_blocks=self.kv_cache.num_free_blocks,
            num_total_blocks=self.kv_cache.num_total_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_hits=self.kv_cache.prefix_cache_hits,
            prefix_cache_queries=self.kv_cache.prefix_cache_queries,
        )

    def _step_outputs(self, plan: SchedulerOutput, results: list[StepResult],
                      sampled: SamplerOutput | None) -> StepOutputs:
        # Row i of the sampler output belongs to the i-th scheduled chunk that samples.
        sample_rows = {item.request.request_id: row
                       for row, item in enumerate(item for item in plan.scheduled if item.samples)}
        deltas = []
        for result in results:
            request = result.request
            logprobs = []
            if result.new_token_ids and sampled is not None and sampled.sampled_logprobs is not None:
                logprobs = self._logprobs(request, sampled, sample_rows[request.request_id])
            if result.finish_reason is not None:
                self.runner.remove_request(request.request_id)
            deltas.append(RequestDelta(
                request_id=request.request_id,
                new_token_ids=result.new_token_ids,
                logprobs=logprobs,
                finish_reason=-1 if result.finish_reason is None else int(result.finish_reason),
                num_prompt_tokens=request.num_prompt_tokens,
                num_cached_tokens=result.num_cached_tokens,
            ))
        new_requests, self._new_requests = self._new_requests, []
        return StepOutputs(new_requests=new_requests, deltas=deltas)

    @staticmethod
    def _logprobs(request: Request, sampled: SamplerOutput, row: int) -> list[Logprobs]:
        k = request.sampling.logprobs
        if k is None:
            return []
        assert sampled.sampled_logprobs is not None
        top_ids = sampled.top_ids[row][:k] if sampled.top_ids else []
        top_values = sampled.top_logprobs[row][:k] if sampled.top_logprobs else []
        return [Logprobs(sampled.sampled_logprobs[row], top_ids, top_values)]


_CORES: dict[str, tuple[type[EngineCore] | type[EmbeddingCore], type]] = {
    GENERATE: (EngineCore, AddRequest),
    EMBEDDING: (EmbeddingCore, EmbedRequest),
}


class EngineCoreProc:
    """Transport loop: PULL requests, step while there is work, PUSH each step's output.

    Blocks on the input socket only when idle, so a busy engine never waits on I/O.
    """

    def __init__(self, config: EngineConfig, input_path: str, output_path: str) -> None:
        # The task picks the core and the request type it accepts, once.
        core_cls, request_type = _CORES[config.model.resolved_task()]
        self.core: EngineCore | EmbeddingCore = core_cls(config)
        self.ctx = zmq.Context()
        self.input = self.ctx.socket(zmq.PULL)
        self.input.bind(f"ipc://{input_path}")
        self.output = self.ctx.socket(zmq.PUSH)
        self.output.connect(f"ipc://{output_path}")
        self.input_codec = Codec(EngineInput)
        self.output_codec = Codec(EngineOutput)
        self.running = True
        self.handlers = {
            request_type: self.core.add_request,
            AbortRequest: lambda msg: self.core.abort_requests(msg.request_ids),
            Ping: self._pong,
        }

    def _pong(self, msg: Ping) -> None:
        self.output.send(self.output_codec.encode(Pong(seq=msg.seq, stats=self.core.stats())))

    def _shutdown(self) -> None:
        self.running = False

    def _drain_input(self, block: bool) -> None:
        # A bounded wait even when idle, so a signal handler's verdict is seen.
        timeout = _IDLE_POLL_MS if block else 0
        while self.input.poll(timeout):
            msg = self.input_codec.decode(self.input.recv())
            self.handlers[type(msg)](msg)
            timeout = 0

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._shutdown())
        signal.signal(signal.SIGINT, lambda *_: self._shutdown())
        try:
            while self.running:
                self._drain_input(block=not self.core.has_work())
                if self.running and self.core.has_work():
                    self.output.send(self.output_codec.encode(self.core.step()))
        finally:
            self.input.close(linger=0)
            self.output.close(linger=0)
            self.ctx.term()
