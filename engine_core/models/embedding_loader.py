"""Build a BERT embedding model and its pooling recipe from a HF / sentence-transformers directory.

Checkpoints come as ``model.safetensors`` (or shards) or ``pytorch_model.bin``, with names
either bare (``encoder.layer.0...``, a ``BertModel`` export) or under ``bert.`` (a
``BertFor*`` task model, whose heads we skip).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch

from engine_core.models.bert import BertConfig, BertModel
from engine_core.models.loader import copy_weights, resolve_dtype
from engine_core.models.pooling import PoolingConfig
from engine_core.task import EMBEDDING_ARCHITECTURES, transformer_dir

__all__ = ["EMBEDDING_ARCHITECTURES", "load_embedding_model", "read_checkpoint", "transformer_dir"]

# Checkpoint tensors with no parameter here: the position-id buffer, BERT's NSP pooler,
# and task heads.
_SKIPPED_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")
# HF name fragments -> ours, applied in order (attention.output before the bare output).
_RENAMES = (
    ("encoder.layer.", "layers."),
    (".attention.self.", "."),
    (".attention.output.dense.", ".o_proj."),
    (".attention.output.LayerNorm.", ".attn_norm."),
    (".intermediate.dense.", ".up_proj."),
    (".output.dense.", ".down_proj."),
    (".output.LayerNorm.", ".mlp_norm."),
    ("embeddings.LayerNorm.", "embeddings.norm."),
    # Original Google TF conversions name LayerNorm parameters gamma / beta.
    (".gamma", ".weight"),
    (".beta", ".bias"),
)


def load_embedding_model(path: str, dtype: torch.dtype | str, device: torch.device | str
                         ) -> tuple[BertModel, BertConfig, PoolingConfig]:
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    pooling = PoolingConfig.from_model_dir(path)
    path = transformer_dir(path)
    with open(os.path.join(path, "config.json")) as f:
        hf_config = json.load(f)
    architecture = (hf_config.get("architectures") or [hf_config.get("model_type", "")])[0]
    if architecture not in EMBEDDING_ARCHITECTURES:
        raise ValueError(f"unsupported embedding architecture {architecture!r}; "
                         f"supported: {', '.join(EMBEDDING_ARCHITECTURES)}")
    config = BertConfig.from_hf_dict(hf_config)
    model = BertModel(config).to(device=device, dtype=dtype)
    load_bert_weights(model, read_checkpoint(path))
    return model.eval().requires_grad_(False), config, pooling


def read_checkpoint(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs from the safetensors files, else from ``pytorch_model.bin``."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield name, f.get_tensor(name)
        return
    bin_file = os.path.join(path, "pytorch_model.bin")
    if not os.path.isfile(bin_file):
        raise FileNotFoundError(f"no *.safetensors or pytorch_model.bin in {path}")
    yield from torch.load(bin_file, map_location="cpu", weights_only=True, mmap=True).items()


def bert_param_name(hf_name: str) -> tuple[str, int | None] | None:
    """Our parameter name and fused-shard index for a checkpoint name; None to skip it."""
    name = hf_name.removeprefix("bert.")
    if name.startswith(_SKIPPED_PREFIXES):
        return None
    for old, new in _RENAMES:
        if old in name:
            name = name.replace(old, new)
    for checkpoint_part, (fused_part, shard) in BertModel.packed_modules_mapping.items():
        if f".{checkpoint_part}." in name:
            return name.replace(f".{checkpoint_part}.", f".{fused_part}."), shard
    return name, None


def load_bert_weights(model: BertModel, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Copy checkpoint tensors into the model; every parameter must be covered."""
    copy_weights(model, weights, bert_param_name)
