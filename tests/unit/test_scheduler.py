"""Scheduler driven by a fake model: sampled tokens come from a function of the request's tokens."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from engine_core.config import SchedulerConfig
from engine_core.kv_cache_manager import KVCacheManager
from engine_core.request import FinishReason, Request, RequestStatus, SamplingParams
from engine_core.scheduler import ScheduledRequest, Scheduler, SchedulerOutput, StepResult

pytestmark = pytest.mark.unit

EOS = 2
MAX_LEN = 256
_ids = itertools.count()


def make_request(prompt_len: int, max_tokens: int = 4, max_model_len: int = MAX_LEN,
                 prompt: list[int] | None = None, **sampling) -> Request:
    rid = f"req-{next(_ids)}"
    prompt = prompt if prompt is not None else [10 + (i * 7) % 50 for i in range(prompt_len)]
    params = SamplingParams(max_tokens=max_tokens, **sampling)
    return Request(rid, prompt, params, EOS, max_model_len)


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 16,
                   max_num_batched_tokens: int = 64, max_model_len: int = MAX_LEN,
                   prefix_caching: bool = False) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    return Scheduler(config, KVCacheManager(num_blocks, block_size, prefix_caching), max_model_len)


def fake_model(item: ScheduledRequest) -> int:
    """Next token as a function of the whole sequence, never EOS: a recomputed request
    must produce exactly what an uninterrupted one would."""
    tokens = item.request.token_ids(0, item.request.num_tokens)
    return 3 + (sum(tokens) * 31 + len(tokens)) % 97


def step(scheduler: Scheduler, model: Callable[[ScheduledRequest], int] = fake_model
         ) -> tuple[SchedulerOutput, list[StepResult]]:
    output = scheduler.schedule()
    sampled = [model(item) for item in output.scheduled if item.samples]
    return output, scheduler.update(output, sampled)


def run_all(scheduler: Scheduler, max_steps: int = 2000) -> list[SchedulerOutput]:
    outputs = []
    while scheduler.has_unfinished_requests():
        assert len(outputs) < max_steps, "scheduler made no progress"
        outputs.append(step(scheduler)[0])
    return outputs


def assert_no_leak(scheduler: Scheduler) -> None:
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_total_blocks


@pytest.mark.parametrize(("max_model_len", "expected"), [(512, 2048), (4096, 4096)])
def test_zero_token_budget_resolves_to_default(max_model_len: int, expected: int) -> None:
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=0), KVCacheManager(8, 4), max_model_len)
    assert scheduler.max_num_batched_tokens == expected


def test_max_num_seqs_limits_running_requests() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    requests = [make_request(3) for _ in range(5)]
    for request in requests:
        scheduler.add_request(request)
    output, _ = step(scheduler)
    assert [item.request for item in output.scheduled] == requests[:2]
    assert scheduler.num_running == 2 and scheduler.num_waiting == 3
    for output in run_all(scheduler):
        assert len(output.scheduled) <= 2
    assert all(len(r.output_token_ids) == 4 for r in requests)


def test_token_budget_chunks_the_prompt_that_does_not_fit() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    first, second = make_request(6), make_request(6)
    scheduler.add_request(first)
    scheduler.add_request(second)
    output, results = step(scheduler)
    assert [(i.request, i.num_new_tokens, i.samples) for i in output.scheduled] == [
        (first, 6, True), (second, 4, False)]
    assert output.total_tokens == 10
    assert [r.request for r in results] == [first]  # only a finished prompt samples
    output, _ = step(scheduler)
    assert [(i.request, i.num_new_tokens, i.num_context_tokens) for i in output.scheduled] == [
        (first, 1, 6), (second, 2, 4)]


def test_long_prompt_is_prefilled_over_several_steps() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    request = make_request(25, max_tokens=3)
    scheduler.add_request(request)
    chunks = []
    for output in run_all(scheduler):
        (item,) = output.scheduled
        chunks.append((item.num_context_tokens, item.num_new_tokens, item.samples))
        assert len(item.block_table) == scheduler.kv_cache.num_blocks_needed(
            item.num_context_tokens + item.num_new_tokens)
    assert chunks == [(0, 10, False), (10, 10, False), (20, 5, True), (25, 1, True), (26, 1, True)]
    assert request.finish_reason == FinishReason.LENGTH and len(request.output_token_ids) == 3


def test_single_token_chunks_come_first() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=10)
    decoding = make_request(2, max_tokens=8)
    scheduler.add_request(decoding)
    step(scheduler)
    long_prompt, chunked = make_request(8), make_request(5)
    scheduler.add_request(long_prompt)
    scheduler.add_request(chunked)
    output, _ = step(scheduler)  # decode 1 + 8 + the last token of budget for `chunked`
    assert [(i.request, i.num_new_tokens) for i in output.scheduled] == [
        (decoding, 1), (chunked, 1), (long_prompt, 8)]
    assert output.num_decodes == 2


def test_new_request_joins_running_ones_between_steps() -> None:
    scheduler = make_scheduler()
    early = make_request(5, max_tokens=10)
    scheduler.add_request(early)
    step(scheduler)
    step(scheduler)
    late = make_request(7, max_tokens=2)
    scheduler.add_request(late)
    output, results = step(scheduler)
    assert [(i.request, i.num_new_tokens) for i in output.scheduled] == [(early, 1), (late, 7)]
    assert {r.request.request_id for r in results} == {early.request_id, late.request_id}
    assert len(early.output_token_ids) == 3 and len(late.output_token_ids) == 1


def test_blocks_grow_with_tokens_and_are_all_freed() -> None:
    scheduler = make_scheduler(num_blocks=16, block_size=4)
    request = make_request(3, max_tokens=12)
    scheduler.add_request(request)
    sizes = []
    while scheduler.has_unfinished_requests():
        output, _ = step(scheduler)
        (item,) = output.scheduled
        sizes.append(len(item.block_table))
        if not request.is_finished:
            assert scheduler.kv_cache.num_free_blocks == 16 - len(item.block_table)
    # Tokens computed per step: 3, 4, ..., 14 -> ceil(n / 4) blocks.
    assert sizes == [-(-n // 4) for n in range(3, 15)]
    assert request.finish_reason == FinishReason.LENGTH
    assert_no_leak(scheduler)


def test_preemption_evicts_the_newest_and_recomputes_it() -> None:
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    old, new = make_request(4, max_tokens=8), make_request(4, max_tokens=8)
    scheduler.add_request(old)
    scheduler.add_request(new)
    for _ in range(5):  # steps cover 4, 5, ..., 8 tokens each: 2 blocks apiece fill the cache
        output, _ = step(scheduler)
        assert not output.preempted
    late = make_request(2)  # would fit in the block left over, but a short cache admits nobody
    scheduler.add_request(late)
    output, _ = step(scheduler)  # old needs a third block
    assert output.preempted == [new] and [i.request for i in output.scheduled] == [old]
    assert late.status == RequestStatus.WAITING and list(scheduler.waiting) == [new, late]
    assert new.status == RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert scheduler.num_preemptions == 1 and scheduler.num_waiting == 2
    outputs = run_all(scheduler)
    readmitted = next(i for o in outputs for i in o.scheduled if i.request is new)
    assert readmitted.num_context_tokens == 0 and readmitted.num_new_tokens == 9  # prompt + 5 outputs
    assert old.finish_reason == new.finish_reason == FinishReason.LENGTH
    assert len(old.output_token_ids) == len(new.output_token_ids) == 8
    assert_no_leak(scheduler)


def test_no_request_is_admitted_in_a_step_that_preempted() -> None:
    # A small budget makes the victim's readmission chunk fit in the block left over.
    scheduler = make_scheduler(num_blocks=4, block_size=4, max_num_batched_tokens=4)
    old, new = make_request(4, max_tokens=8), make_request(4, max_tokens=8)
    scheduler.add_request(old)
    scheduler.add_request(new)
    output, _ = step(scheduler)
    while not output.preempted:
        output, _ = step(scheduler)
    assert output.preempted == [new] and [i.request for i in output.scheduled] == [old]
    assert scheduler.kv_cache.num_free_blocks > 0 and output.total_tokens < 4
    output, _ = step(scheduler)
    assert new in [i.request for i in output.scheduled]


def test_request_may_preempt_itself() -> None:
    scheduler = make_scheduler(num_blocks=3, block_size=4)
    old, new = make_request(4, max_tokens=8), make_request(4, max_tokens=8)
    scheduler.add_request(old)
    scheduler.add_request(new)
    step(scheduler)
    for _ in range(3):  # old: 2 blocks, new: 1 block once old is at 5 tokens
        output, _ = step(scheduler)
        if output.preempted:
            break
    assert output.preempted == [new] and new not in [i.request for i in output.scheduled]
    run_all(scheduler)
    assert len(new.output_token_ids) == 8 and new.finish_reason == FinishReason.LENGTH
    assert_no_leak(scheduler)


def test_tiny_cache_completes_everything_with_the_same_tokens() -> None:
    def run(num_blocks: int) -> tuple[list[list[int]], int]:
        scheduler = make_scheduler(num_blocks=num_blocks, block_size=4, max_num_batched_tokens=16)
        requests = [make_request(3 + 2 * i, max_tokens=6 + i) for i in range(6)]
        for request in requests:
            scheduler.add_request(request)
        run_all(scheduler)
        assert_no_leak(scheduler)
        assert all(r.finish_reason == FinishReason.LENGTH for r in requests)
        return [r.output_token_ids for r in requests], scheduler.num_preemptions

    roomy_tokens, roomy_preemptions = run(64)
    tiny_tokens, tiny_preemptions = run(6)
    assert roomy_preemptions == 0 and tiny_preemptions > 0
    assert tiny_tokens == roomy_tokens
    assert [len(t) for t in tiny_tokens] == [6 + i for i in range(6)]


def test_requests_finish_in_arrival_order_one_at_a_time() -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    requests = [make_request(3 + i % 2, max_tokens=2) for i in range(4)]
    for request in requests:
        scheduler.add_request(request)
    finished = []
    while scheduler.has_unfinished_requests():
        finished += [r.request for r in step(scheduler)[1] if r.finish_reason is not None]
    assert finished == requests


def stop_scheduler_after(request: Request, tokens: list[int]) -> list[StepResult]:
    scheduler = make_scheduler()
    scheduler.add_request(request)
    feed = iter(tokens)
    results = []
    while scheduler.has_unfinished_requests():
        results += step(scheduler, lambda item: next(feed))[1]
    assert_no_leak(scheduler)
    return results


def test_eos_finishes_with_stop_unless_ignored() -> None:
    request = make_request(3, max_tokens=10)
    results = stop_scheduler_after(request, [5, 6, EOS, 7])
    assert request.output_token_ids == [5, 6, EOS] and request.finish_reason == FinishReason.STOP
    assert results[-1].finish_reason == FinishReason.STOP and results[-1].new_token_ids == [EOS]
    ignoring = make_request(3, max_tokens=4, ignore_eos=True)
    stop_scheduler_after(ignoring, [EOS] * 4)
    assert ignoring.output_token_ids == [EOS] * 4 and ignoring.finish_reason == FinishReason.LENGTH


def test_stop_token_ids_finish_with_stop() -> None:
    request = make_request(3, max_tokens=10, stop_token_ids=[42, 43])
    stop_scheduler_after(request, [5, 43, 6])
    assert request.output_token_ids == [5, 43] and request.finish_reason == FinishReason.STOP


def test_min_tokens_postpones_eos() -> None:
    request = make_request(3, max_tokens=10, min_tokens=3)
    stop_scheduler_after(request, [EOS] * 5)
    assert request.output_token_ids == [EOS] * 3 and request.finish_reason == FinishReason.STOP


def test_max_tokens_and_max_model_len_finish_with_length() -> None:
    request = make_request(3, max_tokens=4)
    results = stop_scheduler_after(request, [5] * 10)
    assert len(request.output_token_ids) == 4 and request.finish_reason == FinishReason.LENGTH
    assert [r.finish_reason for r in results] == [None, None, None, FinishReason.LENGTH]
    capped = make_request(10, max_tokens=100, max_model_len=12)
    stop_scheduler_after(capped, [5] * 10)
    assert capped.num_tokens == 12 and capped.finish_reason == FinishReason.LENGTH


@pytest.mark.parametrize("prompt_len", [33, MAX_LEN + 1])  # more blocks than the cache; too long
def test_prompt_that_can_never_fit_is_rejected(prompt_len: int) -> None:
    scheduler = make_scheduler(num_blocks=8, block_size=4)
    fits, hopeless, after = make_request(5), make_request(prompt_len), make_request(5)
    for request in (fits, hopeless, after):
        scheduler.add_request(request)
    output, results = step(scheduler)
    assert output.rejected == [hopeless]
    assert hopeless.finish_reason == FinishReason.ERROR and hopeless.is_finished
    assert [(r.request, r.finish_reason) for r in results if r.request is hopeless] == [
        (hopeless, FinishReason.ERROR)]
    run_all(scheduler)
    assert fits.finish_reason == after.finish_reason == FinishReason.LENGTH
    assert_no_leak(scheduler)


def test_request_outgrowing_the_whole_cache_ends_with_error() -> None:
    scheduler = make_scheduler(num_blocks=2, block_size=4)
    request = make_request(4, max_tokens=20)
    scheduler.add_request(request)
    run_all(scheduler)
    assert request.finish_reason == FinishReason.ERROR and len(request.output_token_ids) == 5
    assert_no_leak(scheduler)


def test_abort_waiting_and_running_requests() -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    running, waiting, other = make_request(4, 8), make_request(4, 8), make_request(4, 2)
    for request in (running, waiting, other):
        scheduler.add_request(request)
    step(scheduler)
    aborted = scheduler.abort_requests([waiting.request_id, running.request_id, "unknown"])
    assert aborted == [waiting, running]
    assert all(r.finish_reason == FinishReason.ABORT and r.is_finished for r in aborted)
    assert scheduler.abort_requests([running.request_id]) == []
    assert scheduler.num_running == 0 and scheduler.num_waiting == 1
    outputs = run_all(scheduler)
    assert {i.request for o in outputs for i in o.scheduled} == {other}
    assert_no_leak(scheduler)


def test_abort_between_schedule_and_update() -> None:
    scheduler = make_scheduler()
    gone, kept = make_request(4, 8), make_request(4, 3)
    scheduler.add_request(gone)
    scheduler.add_request(kept)
    output = scheduler.schedule()
    scheduler.abort_requests([gone.request_id])
    results = scheduler.update(output, [11, 12])
    assert [(r.request, r.new_token_ids) for r in results] == [(kept, [12])]
    assert gone.output_token_ids == []
    run_all(scheduler)
    assert_no_leak(scheduler)


def write_and_check_fake_kv(kv_store: dict[int, tuple[int, int]], output: SchedulerOutput,
                            block_size: int) -> None:
    """Stands in for the model: writes each new token's (position, id) into its slot, then
    checks every token a request attends to is what it should be (cached prefixes included)."""
    def slot(table: list[int], position: int) -> int:
        return table[position // block_size] * block_size + position % block_size

    for item in output.scheduled:
        end = item.num_context_tokens + item.num_new_tokens
        new_tokens = item.request.token_ids(item.num_context_tokens, end)
        for position, token_id in enumerate(new_tokens, start=item.num_context_tokens):
            kv_store[slot(item.block_table, position)] = (position, token_id)
    for item in output.scheduled:
        end = item.num_context_tokens + item.num_new_tokens
        tokens = item.request.token_ids(0, end)
        assert [kv_store.get(slot(item.block_table, p)) for p in range(end)] == list(enumerate(tokens))


def check_invariants(scheduler: Scheduler, output: SchedulerOutput, shared_blocks: bool) -> None:
    kv = scheduler.kv_cache
    assert 0 < output.total_tokens <= scheduler.max_num_batched_tokens or not output.scheduled
    assert len(output.scheduled) <= scheduler.max_num_seqs
    assert all(item.num_new_tokens > 0 for item in output.scheduled)
    sizes = [item.num_new_tokens for item in output.scheduled]
    assert sizes[:output.num_decodes] == [1] * output.num_decodes and 1 not in sizes[output.num_decodes:]
    for item in output.scheduled:
        assert len(item.block_table) == kv.num_blocks_needed(item.num_context_tokens + item.num_new_tokens)
    tables = [kv.block_table(r.request_id) for r in scheduler.running]
    used = {block for table in tables for block in table}
    if not shared_blocks:
        assert sum(len(table) for table in tables) == len(used)
    assert all(not kv.block_table(r.request_id) for r in scheduler.waiting)
    assert kv.num_free_blocks + len(used) == kv.num_total_blocks


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_randomized_soak_keeps_invariants(prefix_caching: bool) -> None:
    rng = random.Random(1234)
    block_size = 4
    scheduler = make_scheduler(num_blocks=24, block_size=block_size, max_num_seqs=6,
                               max_num_batched_tokens=20, max_model_len=64, prefix_caching=prefix_caching)
    shared_prefixes = [[rng.randrange(3, 500) for _ in range(12)] for _ in range(3)]
    all_requests: list[Request] = []
    kv_store: dict[int, tuple[int, int]] = {}
    for _ in range(400):
        for _ in range(rng.choice([0, 0, 1, 2])):
            prompt = rng.choice(shared_prefixes)[:rng.randrange(0, 13)]
            prompt += [rng.randrange(3, 500) for _ in range(rng.randrange(1, 40))]
            request = make_request(0, max_tokens=rng.randrange(1, 30), max_model_len=64, prompt=prompt)
            all_requests.append(request)
            scheduler.add_request(request)
        if rng.random() < 0.1 and all_requests:
            scheduler.abort_requests([rng.choice(all_requests).request_id])
        output = scheduler.schedule()
        check_invariants(scheduler, output, shared_blocks=prefix_caching)
        write_and_check_fake_kv(kv_store, output, block_size)
        scheduler.update(output, [rng.choice([EOS] + [7] * 20) for item in output.scheduled if item.samples])
    for output in run_all(scheduler):
        check_invariants(scheduler, output, shared_blocks=prefix_caching)
        write_and_check_fake_kv(kv_store, output, block_size)
    assert all(r.is_finished for r in all_requests)
    assert scheduler.num_preemptions > 0 and scheduler.num_running == scheduler.num_waiting == 0
    for request in all_requests:
        if request.finish_reason == FinishReason.LENGTH:
            assert request.num_tokens == request.max_total_tokens
    if prefix_caching:
        assert scheduler.kv_cache.prefix_cache_hits > 0
    assert_no_leak(scheduler)


def test_prefix_cached_prompt_starts_after_the_cached_blocks() -> None:
    scheduler = make_scheduler(block_size=4, prefix_caching=True)
    first, second = make_request(10, max_tokens=2), make_request(10, max_tokens=2)
    scheduler.add_request(first)
    first_blocks = step(scheduler)[0].scheduled[0].block_table
    scheduler.add_request(second)
    output, results = step(scheduler)  # first finishes in this step: its blocks stay cached
    (item,) = [i for i in output.scheduled if i.request is second]
    assert (item.num_context_tokens, item.num_new_tokens) == (8, 2)
    assert item.block_table[:2] == first_blocks[:2]
    assert [r.num_cached_tokens for r in results if r.request is second] == [8]
    run_all(scheduler)
    assert second.output_token_ids == first.output_token_ids  # same prompt, same fake model
    assert_no_leak(scheduler)
