"""Pooling recipes read from sentence-transformers directories and the batched reductions."""

from __future__ import annotations

import json

import pytest
import torch

from engine_core.models.pooling import Pooler, PoolingConfig

pytestmark = pytest.mark.unit

SEQ_LENS = [3, 1, 5, 2]


def write_st_dir(path, pooling_flags: dict, normalize: bool) -> str:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    st_config = {"word_embedding_dimension": 8, **pooling_flags}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(st_config))
    return str(path)


@pytest.mark.parametrize(("flags", "normalize", "expected"), [
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, True, PoolingConfig("mean", True)),
    ({"pooling_mode_cls_token": True}, False, PoolingConfig("cls", False)),
    ({"pooling_mode_lasttoken": True}, True, PoolingConfig("last", True)),
    ({"pooling_mode": "mean"}, False, PoolingConfig("mean", False)),
])
def test_config_from_sentence_transformers_dir(tmp_path, flags: dict, normalize: bool,
                                               expected: PoolingConfig) -> None:
    assert PoolingConfig.from_model_dir(write_st_dir(tmp_path, flags, normalize)) == expected


def test_plain_model_dir_gets_decoder_default(tmp_path) -> None:
    assert PoolingConfig.from_model_dir(str(tmp_path)) == PoolingConfig(mode="last", normalize=True)


@pytest.mark.parametrize("flags", [{"pooling_mode_max_tokens": True},
                                   {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
                                   {}])
def test_unsupported_or_ambiguous_modes_are_rejected(tmp_path, flags: dict) -> None:
    with pytest.raises(NotImplementedError):
        PoolingConfig.from_model_dir(write_st_dir(tmp_path, flags, normalize=False))


def per_sequence_reference(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    rows, start = [], 0
    for n in SEQ_LENS:
        seq = hidden[start:start + n]
        rows.append({"mean": seq.mean(0), "cls": seq[0], "last": seq[-1]}[mode])
        start += n
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["mean", "cls", "last"])
@pytest.mark.parametrize("normalize", [False, True])
def test_batched_pooling_matches_a_per_sequence_loop(mode: str, normalize: bool) -> None:
    hidden = torch.randn(sum(SEQ_LENS), 8, generator=torch.Generator().manual_seed(0))
    expected = per_sequence_reference(hidden, mode)
    if normalize:
        expected = expected / expected.norm(dim=-1, keepdim=True)
    pooled = Pooler(PoolingConfig(mode, normalize)).pool(hidden, SEQ_LENS)
    torch.testing.assert_close(pooled, expected)


def test_bfloat16_hidden_pools_to_float32() -> None:
    hidden = torch.randn(sum(SEQ_LENS), 8).to(torch.bfloat16)
    pooled = Pooler(PoolingConfig("mean", False)).pool(hidden, SEQ_LENS)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, per_sequence_reference(hidden.float(), "mean"))
