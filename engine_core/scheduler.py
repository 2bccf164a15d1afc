"""FCFS scheduler with chunked prefill and recompute preemption. Torch-free.

There are no prefill and decode phases: each step every request's
``num_computed_tokens`` catches up with its ``num_tokens`` as far as the step's
token budget allows. A request whose chunk reaches ``num_tokens`` samples one new
token; a prompt longer than the budget is simply computed over several steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine_core.config import SchedulerConfig
from engine_core.kv_cache_manager import KVCacheManager
from engine_core.request import FinishReason, Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # computed this step, starting at num_context_tokens
    block_table: list[int]  # covers num_context_tokens + num_new_tokens
    # Snapshots taken when scheduled, so they still hold after ``update`` advanced the request.
    num_context_tokens: int = field(init=False)
    _samples: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.num_context_tokens = self.request.num_computed_tokens
        self._samples = self.num_context_tokens + self.num_new_tokens == self.request.num_tokens

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the request's last token, so a new token is sampled."""
        return self._samples


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]  # all single-token chunks (decodes) first, then the longer ones
    num_decodes: int  # how many leading entries have num_new_tokens == 1
    preempted: list[Request]
    rejected: list[Request]  # can never fit: finished with FinishReason.ERROR

    @property
    def total_tokens(self) -> int:
        return sum(item.num_new_tokens for item in self.scheduled)


@dataclass
class StepResult:
    request: Request
    new_token_ids: list[int]
    finish_reason: FinishReason | None
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache when first scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager, max_model_len: int) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens or max(max_model_len, 2048)
        self.max_model_len = max_model_len
        self.kv_cache = kv_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order: the last one is preempted first
        self._requests: dict[str, Request] = {}  # every unfinished request, by id
        self._rejected: list[Request] = []  # found by add_request, reported by the next schedule
        self._num_cached_tokens: dict[str, int] = {}
        self._num_preemptions = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_preemptions(self) -> int:
        return self._num_preemptions

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests or self._rejected)

    def add_request(self, request: Request) -> None:
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        if self._can_never_fit(request):
            self._finish(request, FinishReason.ERROR)
            self._rejected.append(request)
            return
        self._requests[request.request_id] = request
        self.waiting.append(request)

    def abort_requests(self, request_ids: Iterable[str]) -> list[Request]:
        """Finish the known unfinished ones with ABORT and free their blocks.

        Safe between ``schedule`` and ``update`` as long as that step still runs in full:
        with prefix caching, blocks scheduled this step are already findable by their hash.
        """
        aborted: list[Request] = []
        for request_id in request_ids:
            request = self._requests.get(request_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._finish(request, FinishReason.ABORT)
            aborted.append(request)
        return aborted

    def schedule(self) -> SchedulerOutput:
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []
        rejected, self._rejected = self._rejected, []
        budget = self._schedule_running(self.max_num_batched_tokens, scheduled, preempted)
        # A preemption means the cache is short: admitting new work would only thrash it.
        if not preempted:
            self._schedule_waiting(budget, scheduled, rejected)
        scheduled.sort(key=lambda item: item.num_new_tokens != 1)  # stable: decodes first, FCFS kept
        num_decodes = sum(1 for item in scheduled if item.num_new_tokens == 1)
        return SchedulerOutput(scheduled, num_decodes, preempted, rejected)

    def update(self, output: SchedulerOutput, sampled_token_ids: list[int]) -> list[StepResult]:
        """Apply one executed step: ``sampled_token_ids`` holds one token per sampling
        entry of ``output.scheduled``, in that order."""
        num_sampling = sum(1 for item in output.scheduled if item.samples)
        if len(sampled_token_ids) != num_sampling:
            raise ValueError(f"expected {num_sampling} sampled tokens, got {len(sampled_token_ids)}")
        results = [StepResult(request, [], FinishReason.ERROR) for request in output.rejected]
        sampled = iter(sampled_token_ids)
        any_finished = False
        for item in output.scheduled:
            token_id = next(sampled) if item.samples else None
            request = item.request
            if request.is_finished:  # aborted after this step was scheduled
                continue
            request.num_computed_tokens += item.num_new_tokens
            if token_id is None:
                continue
            request.output_token_ids.append(token_id)
            finish_reason = request.check_stop()
            num_cached_tokens = self._num_cached_tokens.get(request.request_id, 0)
            if finish_reason is not None:
                self._finish(request, finish_reason)
                any_finished = True
            results.append(StepResult(request, [token_id], finish_reason, num_cached_tokens))
        if any_finished:
            self.running = [request for request in self.running if not request.is_finished]
        return results

    # -- scheduling -----------------------------------------------------------------------

    def _schedule_running(
        self, budget: int, scheduled: list[ScheduledRequest], preempted: list[Request]
    ) -> int:
        """Give each running request, oldest first, as many tokens as the budget allows."""
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new_tokens = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._allocate_or_preempt(request, num_new_tokens, preempted):
                break  # it preempted itself, and every request after it went first
            scheduled.append(self._scheduled(request, num_new_tokens))
            budget -= num_new_tokens
            index += 1
        return budget

    def _allocate_or_preempt(self, request: Request, num_new_tokens: int, preempted: list[Request]) -> bool:
        """Preempt the newest running requests until ``request`` gets its slots.

        The victims always come after ``request`` in ``running``, so none of them has
        been scheduled this step. Returns False when ``request`` itself had to go.
        """
        num_tokens = request.num_computed_tokens + num_new_tokens
        while not self.kv_cache.allocate_slots(request.request_id, num_tokens, request.token_ids):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        return True

    def _schedule_waiting(
        self, budget: int, scheduled: list[ScheduledRequest], rejected: list[Request]
    ) -> None:
        """Admit waiting requests in arrival order; a prompt longer than the budget is chunked."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            if self._can_never_fit(request):  # a preempted request may have outgrown the cache
                self.waiting.popleft()
                self._finish(request, FinishReason.ERROR)
                rejected.append(request)
                continue
            num_cached = self.kv_cache.match_prefix(request.request_id, request.num_tokens, request.token_ids)
            num_new_tokens = min(request.num_tokens - num_cached, budget)
            if not self.kv_cache.allocate_slots(request.request_id, num_cached + num_new_tokens,
                                                request.token_ids):
                self.kv_cache.free(request.request_id)  # drop the prefix hits taken above
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            self._num_cached_tokens.setdefault(request.request_id, num_cached)
            request.num_computed_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(self._scheduled(request, num_new_tokens))
            budget -= num_new_tokens

    def _scheduled(self, request: Request, num_new_tokens: int) -> ScheduledRequest:
        return ScheduledRequest(request, num_new_tokens, self.kv_cache.block_table(request.request_id))

    def _can_never_fit(self, request: Request) -> bool:
        too_many_blocks = self.kv_cache.num_blocks_needed(request.num_tokens) > self.kv_cache.num_total_blocks
        return too_many_blocks or request.num_tokens > self.max_model_len

    def _preempt(self, request: Request) -> None:
        """Recompute style: drop its K/V and queue it first; its tokens are kept."""
        self.kv_cache.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(request)
        self._num_preemptions += 1

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.kv_cache.free(request.request_id)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self._requests.pop(request.request_id, None)
        self._num_cached_tokens.pop(request.request_id, None)
