"""EmbeddingCore on a tiny random BERT: FCFS batching under both budgets, batch
invariance, aborts, the max length, and EngineCoreProc picking it from the task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from engine_core.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine_core.core import EngineCoreProc
from engine_core.embedding_core import EmbeddingCore
from engine_core.messages.engine_input import AddRequest, EmbedRequest

pytestmark = pytest.mark.model

MAX_POSITIONS = 64


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=MAX_POSITIONS)
    path = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(path)
    return str(path)


def make_core(path: str, max_num_seqs: int = 256, max_num_batched_tokens: int = 0,
              max_model_len: int = 0) -> EmbeddingCore:
    scheduler = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    model = ModelConfig(model=path, dtype="float32", task="embedding", max_model_len=max_model_len)
    return EmbeddingCore(EngineConfig(model, CacheConfig(), scheduler))


def prompt(length: int, offset: int = 0) -> list[int]:
    return [(7 * i + offset) % 90 + 3 for i in range(length)]


def test_steps_take_fcfs_batches_under_both_budgets(bert_dir: str) -> None:
    core = make_core(bert_dir, max_num_seqs=3, max_num_batched_tokens=MAX_POSITIONS)
    lengths = {"r0": 30, "r1": 30, "r2": 10, "r3": 5, "r4": 5, "r5": 1}
    for rid, n in lengths.items():
        core.add_request(EmbedRequest(rid, prompt(n)))
    assert core.stats().num_waiting == 6
    steps = []
    while core.has_work():
        steps.append(core.step().results)
    # 30 + 30 + 10 tokens exceed 64; then three sequences is the cap.
    assert [[r.request_id for r in step] for step in steps] == [["r0", "r1"], ["r2", "r3", "r4"], ["r5"]]
    assert all(r.num_prompt_tokens == lengths[r.request_id] for step in steps for r in step)
    assert core.stats().num_waiting == 0


def test_batched_embeddings_equal_one_at_a_time(bert_dir: str) -> None:
    core = make_core(bert_dir)
    prompts = [prompt(n, offset) for offset, n in enumerate((3, 17, 1, 40))]
    for i, ids in enumerate(prompts):
        core.add_request(EmbedRequest(f"b{i}", ids))
    batched = core.step().results
    singles = []
    for i, ids in enumerate(prompts):
        core.add_request(EmbedRequest(f"s{i}", ids))
        singles.append(core.step().results[0])
    hidden = core.model.config.hidden_size
    for together, alone in zip(batched, singles, strict=True):
        assert len(together.embedding) == hidden
        torch.testing.assert_close(torch.tensor(together.embedding), torch.tensor(alone.embedding),
                                   atol=1e-5, rtol=1e-5)
    # Different inputs give different vectors (the pooling does not collapse the batch).
    assert torch.tensor(batched[0].embedding).dot(torch.tensor(batched[1].embedding)) < 0.999


def test_abort_drops_waiting_requests(bert_dir: str) -> None:
    core = make_core(bert_dir)
    for rid in ("keep", "drop", "also"):
        core.add_request(EmbedRequest(rid, prompt(4)))
    core.abort_requests(["drop", "unknown"])
    assert [r.request_id for r in core.step().results] == ["keep", "also"]
    assert not core.has_work()


def test_max_len_comes_from_sentence_transformers_then_the_flag(bert_dir: str, tmp_path) -> None:
    assert make_core(bert_dir).max_model_len == MAX_POSITIONS
    assert make_core(bert_dir, max_model_len=20).stats().max_model_len == 20
    with pytest.raises(ValueError, match="exceeds the model's 64 position embeddings"):
        make_core(bert_dir, max_model_len=MAX_POSITIONS + 1)
    with pytest.raises(ValueError, match="below the longest input"):
        make_core(bert_dir, max_num_batched_tokens=MAX_POSITIONS - 1)
    st_dir = tmp_path / "st"
    st_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (st_dir / name).write_bytes((Path(bert_dir) / name).read_bytes())
    (st_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    core = make_core(str(st_dir))
    assert core.max_model_len == 32
    core.add_request(EmbedRequest("long", prompt(33)))  # refused without stopping the engine
    core.add_request(EmbedRequest("ok", prompt(32)))
    results = {r.request_id: r for r in core.step().results}
    assert results["long"].embedding == [] and results["long"].num_prompt_tokens == 33
    assert len(results["ok"].embedding) > 0
    assert not core.has_work()


def test_engine_core_proc_picks_the_embedding_core_from_the_task(bert_dir: str, tmp_path) -> None:
    config = EngineConfig(ModelConfig(model=bert_dir, dtype="float32"), CacheConfig(), SchedulerConfig())
    proc = EngineCoreProc(config, str(tmp_path / "in"), str(tmp_path / "out"))
    try:
        assert isinstance(proc.core, EmbeddingCore)
        assert EmbedRequest in proc.handlers and AddRequest not in proc.handlers
    finally:
        proc.input.close(linger=0)
        proc.output.close(linger=0)
        proc.ctx.term()
