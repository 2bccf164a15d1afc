"""Greedy generation of SmolLM2 through the whole engine (scheduler, paged KV cache,
ragged batches, sampler) equals Hugging Face transformers token for token."""

from __future__ import annotations

import os

import pytest
import torch

from engine_core.config import default_model_path
from engine_core.llm import LLM, Generation
from engine_core.request import FinishReason, SamplingParams

pytestmark = pytest.mark.model

NEW_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "def quicksort(items):",
    "Here is a short poem about the autumn wind and the falling leaves:",
    "1 + 1 =",
    "Q: Why is the sky blue?\nA:",
    "Translate to French: I would like a cup of coffee, please.",
    "The three laws of thermodynamics are",
    "In 1969, Neil Armstrong",
    # Longer than one 16-token block, several blocks in fact.
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to "
    "synthesize foods from carbon dioxide and water. In plants, it generally involves the green "
    "pigment chlorophyll and generates oxygen as a byproduct. Explain why this matters for",
]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(dtype="float32", kv_cache_memory=0.25, max_num_batched_tokens=2048)


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    """transformers' greedy continuation of every prompt, one prompt at a time (no padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    out = {}
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=2)
            out[prompt] = generated[0, ids.shape[1]:].tolist()
    return out


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    # min_tokens masks EOS exactly like transformers' min_new_tokens does for the reference.
    return SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0)


def test_batched_greedy_equals_transformers(llm: LLM, reference: dict[str, list[int]]) -> None:
    prompt_ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    assert max(len(ids) for ids in prompt_ids) > 2 * llm.config.cache.block_size
    generations = llm.generate(prompt_ids, greedy())
    for prompt, generation in zip(PROMPTS, generations, strict=True):
        assert generation.token_ids == reference[prompt], prompt
        assert generation.finish_reason == FinishReason.LENGTH


def test_new_prompt_joins_running_decodes(llm: LLM, reference: dict[str, list[int]]) -> None:
    first, late = PROMPTS[:4], PROMPTS[4:]
    generations = {llm.add(llm.tokenizer.encode(p), greedy()): Generation([]) for p in first}
    for _ in range(5):  # the first prompts are decoding by now
        llm.step_into(generations)
    assert all(0 < len(g.token_ids) < NEW_TOKENS for g in generations.values())
    for p in late:
        generations[llm.add(llm.tokenizer.encode(p), greedy())] = Generation([])
    llm.run(generations)
    got = [g.token_ids for g in generations.values()]
    assert got == [reference[p] for p in first + late]


def test_chunked_prefill_equals_transformers(reference: dict[str, list[int]]) -> None:
    # A token budget of 16 splits the long prompt into many chunks, run beside decodes.
    small = LLM(dtype="float32", kv_cache_memory=0.05, max_num_batched_tokens=16)
    prompts = [PROMPTS[0], PROMPTS[-1]]
    generations = small.generate([small.tokenizer.encode(p) for p in prompts], greedy())
    assert [g.token_ids for g in generations] == [reference[p] for p in prompts]


def test_every_block_is_free_after_the_batch(llm: LLM) -> None:
    llm.generate([llm.tokenizer.encode(p) for p in PROMPTS[:3]], greedy(8))
    kv = llm.engine.kv_cache
    assert kv.num_free_blocks == kv.num_total_blocks


def test_prefix_caching_reuses_blocks_and_keeps_outputs(reference: dict[str, list[int]]) -> None:
    cached = LLM(dtype="float32", kv_cache_memory=0.05, enable_prefix_caching=True)
    prompt = cached.tokenizer.encode(PROMPTS[-1])
    first = cached.generate([prompt], greedy())[0].token_ids
    second = cached.generate([prompt], greedy())[0].token_ids
    assert first == second == reference[PROMPTS[-1]]
    assert cached.engine.kv_cache.prefix_cache_hits >= (len(prompt) // 16) * 16 - 16
