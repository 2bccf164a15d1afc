"""The batched sampler on hand-made logits (no model)."""

from __future__ import annotations

import pytest
import torch

from engine_core.request import Request, SamplingParams
from engine_core.sampler import Sampler, SamplingBatch

pytestmark = pytest.mark.unit

VOCAB = 50
EOS = 7


def requests(*params: SamplingParams, outputs: list[list[int]] | None = None) -> list[Request]:
    reqs = []
    for i, p in enumerate(params):
        r = Request(f"r{i}", [1, 2, 3], p, EOS, max_model_len=1000)
        r.output_token_ids = list(outputs[i]) if outputs else []
        reqs.append(r)
    return reqs


def sample(logits: torch.Tensor, reqs: list[Request], generators=None):
    gens = generators if generators is not None else [None] * len(reqs)
    return Sampler()(logits.clone(), SamplingBatch.build(reqs, gens, VOCAB))


def seeded(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_greedy_is_argmax() -> None:
    logits = torch.randn(4, VOCAB)
    out = sample(logits, requests(*[SamplingParams(temperature=0.0)] * 4))
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.sampled_logprobs is None


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_k=1),
    SamplingParams(temperature=1.0, top_p=1e-6),
    SamplingParams(temperature=1.0, min_p=1.0),
])
def test_truncation_to_one_token_is_greedy(params: SamplingParams) -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, VOCAB)
    out = sample(logits, requests(*[params] * 8))
    assert out.token_ids == logits.argmax(-1).tolist()


def test_mixed_batch_keeps_greedy_rows_greedy() -> None:
    logits = torch.randn(2, VOCAB)
    out = sample(logits, requests(SamplingParams(temperature=0.0), SamplingParams(temperature=1.5)))
    assert out.token_ids[0] == logits[0].argmax().item()


def test_top_k_only_draws_from_the_k_best() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, VOCAB).repeat(400, 1)
    out = sample(logits, requests(*[SamplingParams(temperature=2.0, top_k=3)] * 400))
    allowed = set(logits[0].topk(3).indices.tolist())
    assert set(out.token_ids) == allowed


def test_temperature_sampling_follows_the_distribution() -> None:
    torch.manual_seed(2)
    logits = torch.tensor([[2.0, 1.0, 0.0] + [-1e9] * (VOCAB - 3)]).repeat(6000, 1)
    out = sample(logits, requests(*[SamplingParams(temperature=1.0)] * 6000))
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=VOCAB)[:3].float() / 6000
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1)
    assert torch.allclose(counts, expected, atol=0.03)


def test_seeded_rows_repeat_and_differ_by_seed() -> None:
    logits = torch.zeros(1, VOCAB)
    params = SamplingParams(temperature=1.0, seed=5)
    runs = [[sample(logits, requests(params), [g]).token_ids[0] for _ in range(20)]
            for g in (seeded(5), seeded(5), seeded(6))]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_min_tokens_bans_eos_and_stop_ids() -> None:
    logits = torch.full((1, VOCAB), -5.0)
    logits[0, EOS] = 10.0
    logits[0, 9] = 9.0
    logits[0, 11] = 8.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[9])
    assert sample(logits, requests(params, outputs=[[4]])).token_ids == [11]
    assert sample(logits, requests(params, outputs=[[4, 5]])).token_ids == [EOS]


def test_repetition_and_presence_penalties_move_away_from_seen_tokens() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 3] = 1.0  # in the prompt
    logits[0, 20] = 0.9
    assert sample(logits, requests(SamplingParams(temperature=0.0))).token_ids == [3]
    assert sample(logits, requests(SamplingParams(temperature=0.0, repetition_penalty=2.0))).token_ids == [20]
    logits[0, 20] = 1.0
    logits[0, 21] = 0.8
    out = sample(logits, requests(SamplingParams(temperature=0.0, presence_penalty=0.5), outputs=[[20, 3]]))
    assert out.token_ids == [21]


def test_logprobs_are_the_model_log_softmax() -> None:
    logits = torch.randn(2, VOCAB)
    out = sample(logits, requests(SamplingParams(temperature=0.0, logprobs=3),
                                  SamplingParams(temperature=0.0, logprobs=1)))
    reference = torch.log_softmax(logits, -1)
    for row in range(2):
        token = out.token_ids[row]
        assert out.sampled_logprobs[row] == pytest.approx(reference[row, token].item(), abs=1e-5)
        assert out.top_ids[row][0] == token
        assert out.top_logprobs[row] == pytest.approx(reference[row].topk(3).values.tolist(), abs=1e-5)
