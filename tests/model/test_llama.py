"""Our Llama-family model over the paged KV cache against transformers' reference logits."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

from engine_core.config import ModelConfig, default_model_path
from engine_core.models.llama import LlamaForCausalLM
from engine_core.models.loader import load_model
from kernels.attention.cpu import CpuAttentionBackend
from tests.model.helpers import PagedRequests, make_kv_caches

pytestmark = pytest.mark.model
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BLOCK_SIZE = 4
NUM_BLOCKS = 128
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

# One schedule exercising every batch shape: ragged prefills, batched decodes, a prefill
# mixed into decodes, and a prompt prefilled in two chunks (the second over cached context).
SCHEDULE = [
    [("a", 7), ("b", 3), ("c", 12)],
    [("a", 1), ("b", 1), ("c", 1)],
    [("a", 1), ("b", 1), ("c", 1)],
    [("a", 1), ("b", 1), ("c", 1), ("d", 5), ("e", 8)],
    [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 13)],
    [("e", 1), ("a", 1)],
]


def tiny_hf_model(kind: str, tmp_path) -> str:
    """Random-weight HF checkpoint directory; weights are large enough that attention is
    far from uniform and biases are non-zero, so a wrong mapping shows in the logits."""
    if kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY))
    else:
        rope = {"rope_type": "default", "rope_theta": 500.0}
        if kind == "llama3_rope_tied":
            rope = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
        config = transformers.LlamaConfig(**TINY, rope_parameters=rope,
                                          tie_word_embeddings=kind == "llama3_rope_tied")
        model = transformers.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(tmp_path)
    return str(tmp_path)


def run_schedule(model: LlamaForCausalLM, schedule: list[list[tuple[str, int]]],
                 sequences: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Run the steps through our model; returns every computed token's logits per request."""
    cfg = model.config
    dtype = model.embed_tokens.weight.dtype
    kv_caches = make_kv_caches(cfg.num_layers, NUM_BLOCKS, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim, dtype)
    requests = PagedRequests(NUM_BLOCKS, BLOCK_SIZE, seed=3)
    logits: dict[str, list[torch.Tensor]] = {}
    for step_schedule in schedule:
        step = requests.step(step_schedule)
        spans = list(zip(step.request_ids, step.token_ranges, strict=True))
        input_ids = torch.tensor([token for request_id, (start, end) in spans
                                  for token in sequences[request_id][start:end]])
        meta = model.attn_backend.prepare(step.layout, torch.device("cpu"))
        step_logits = model.compute_logits(model(input_ids, step.positions, kv_caches, meta))
        row = 0
        for request_id, (start, end) in spans:
            logits.setdefault(request_id, []).append(step_logits[row:row + end - start])
            row += end - start
    return {request_id: torch.cat(parts) for request_id, parts in logits.items()}


def total_tokens(schedule: list[list[tuple[str, int]]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for step in schedule:
        for request_id, num_new in step:
            totals[request_id] = totals.get(request_id, 0) + num_new
    return totals


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama3_rope_tied"])
@torch.inference_mode()
def test_tiny_model_matches_transformers(kind: str, tmp_path) -> None:
    path = tiny_hf_model(kind, tmp_path)
    model, config = load_model(ModelConfig(model=path, dtype="float32"), CpuAttentionBackend,
                               torch.device("cpu"))
    assert config.attention_bias == (kind == "qwen2")
    assert config.tie_word_embeddings == (kind == "llama3_rope_tied")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()

    generator = torch.Generator().manual_seed(1)
    sequences = {request_id: torch.randint(0, TINY["vocab_size"], (length,), generator=generator).tolist()
                 for request_id, length in total_tokens(SCHEDULE).items()}
    ours = run_schedule(model, SCHEDULE, sequences)

    for request_id, tokens in sequences.items():
        expected = reference(torch.tensor([tokens])).logits[0]
        torch.testing.assert_close(ours[request_id], expected, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_smollm2_gguf_matches_transformers() -> None:
    gguf_path = default_model_path()
    model, config = load_model(ModelConfig(model=gguf_path, dtype="float32"), CpuAttentionBackend,
                               torch.device("cpu"))
    assert (config.num_layers, config.num_kv_heads, config.tie_word_embeddings) == (30, 3, True)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32).eval()

    sequences = {"a": [1, 504, 3458, 314, 4649, 30, 2495, 314, 253], "b": [1, 1780, 47, 28, 216]}
    schedule = [[("a", 8), ("b", 4)], [("a", 1), ("b", 1)]]
    ours = run_schedule(model, schedule, sequences)

    for request_id, tokens in sequences.items():
        expected = reference(torch.tensor([tokens])).logits[0]
        torch.testing.assert_close(ours[request_id], expected, atol=2e-3, rtol=1e-3)
        assert torch.equal(ours[request_id].argmax(-1), expected.argmax(-1))
