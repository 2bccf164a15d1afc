"""BERT encoder (all-MiniLM, bge, e5 ...) over a flat varlen token batch, for embeddings.

A batch is ``[T]`` tokens of several sequences laid end to end (``seq_lens`` says where
each one ends), like the decoder's ragged batch. Everything but attention is per token,
so it runs on the flat batch with no padding; attention alone scatters q/k/v into a
padded ``[B, H, L, D]`` view with a key mask, which keeps SDPA's fused kernels.
Shapes: T tokens, B sequences, L longest sequence, H heads, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine_core.models.layers import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    RowParallelLinear,
    VocabEmbedding,
)

# HF hidden_act -> torch's GELU "approximate" argument.
_GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu_approximate: str = "none"  # "none" (exact erf GELU, BERT's) or "tanh"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_dict(cls, d: dict) -> BertConfig:
        """Build from a HF ``config.json`` dict of a BERT-family encoder."""
        act = d.get("hidden_act", "gelu")
        if act not in _GELU_APPROXIMATIONS:
            raise NotImplementedError(f"activation {act!r} is not supported "
                                      f"(supported: {', '.join(_GELU_APPROXIMATIONS)})")
        position_type = d.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise NotImplementedError(f"position_embedding_type {position_type!r} is not supported "
                                      "(only absolute)")
        if d["hidden_size"] % d["num_attention_heads"]:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            max_position_embeddings=d.get("max_position_embeddings", 512),
            type_vocab_size=d.get("type_vocab_size", 2),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            gelu_approximate=_GELU_APPROXIMATIONS[act],
            pad_token_id=d.get("pad_token_id") or 0,
        )


@dataclass(frozen=True)
class PaddedLayout:
    """Where each flat token sits in the padded ``[B, L]`` grid attention works on.
    Built once per forward and shared by all layers."""

    num_seqs: int
    max_len: int
    slots: torch.Tensor  # [T] int64: row of each token in the flattened [B * L] grid
    key_mask: torch.Tensor  # [B, 1, 1, L] bool: True where the key is a real token

    @classmethod
    def build(cls, seq_lens: list[int], device: torch.device) -> PaddedLayout:
        lens = torch.tensor(seq_lens, dtype=torch.int64, device=device)
        num_seqs, max_len = len(seq_lens), max(seq_lens)
        starts = torch.cumsum(lens, 0) - lens  # [B] first flat token of each sequence
        seq_ids = torch.repeat_interleave(torch.arange(num_seqs, device=device), lens)  # [T]
        offsets = torch.arange(seq_ids.numel(), device=device) - starts[seq_ids]  # [T] index within its seq
        key_mask = torch.arange(max_len, device=device) < lens[:, None]  # [B, L]
        return cls(num_seqs, max_len, seq_ids * max_len + offsets, key_mask[:, None, None, :])


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # [T], [T] -> [T, hidden]. Every token is segment 0: embedding inputs are single texts.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.norm(x + self.token_type_embeddings.weight[0])


class BertLayer(nn.Module):
    """Post-norm encoder block: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        hidden = cfg.hidden_size
        self.qkv_proj = MergedColumnParallelLinear(hidden, [hidden, hidden, hidden], bias=True)
        self.o_proj = RowParallelLinear(hidden, hidden, bias=True)
        self.attn_norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.up_proj = ColumnParallelLinear(hidden, cfg.intermediate_size, bias=True)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, hidden, bias=True)
        self.mlp_norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.gelu_approximate = cfg.gelu_approximate

    def attention(self, x: torch.Tensor, layout: PaddedLayout) -> torch.Tensor:  # [T, hidden] -> same
        num_tokens, hidden = x.shape
        qkv = self.qkv_proj(x).view(num_tokens, 3, self.num_heads, self.head_dim)  # [T, 3, H, D]
        # Padding rows stay zero; their keys are masked and their queries are dropped below.
        padded = qkv.new_zeros(layout.num_seqs * layout.max_len, 3, self.num_heads, self.head_dim)
        padded[layout.slots] = qkv
        padded = padded.view(layout.num_seqs, layout.max_len, 3, self.num_heads, self.head_dim)
        q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, D] each
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_mask)  # [B, H, L, D]
        out = out.transpose(1, 2).reshape(-1, hidden)  # [B * L, hidden]
        return self.o_proj(out[layout.slots])  # [T, hidden]

    def forward(self, x: torch.Tensor, layout: PaddedLayout) -> torch.Tensor:  # [T, hidden] -> same
        x = self.attn_norm(x + self.attention(x, layout))
        mlp = self.down_proj(F.gelu(self.up_proj(x), approximate=self.gelu_approximate))
        return self.mlp_norm(x + mlp)


class BertModel(nn.Module):
    # Checkpoint projections that live fused in one of our parameters: name -> (ours, shard index).
    packed_modules_mapping: dict[str, tuple[str, int]] = {
        "query": ("qkv_proj", 0),
        "key": ("qkv_proj", 1),
        "value": ("qkv_proj", 2),
    }

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
        # input_ids, positions: [T] int64 (positions restart at 0 per sequence) -> hidden [T, hidden]
        layout = PaddedLayout.build(seq_lens, input_ids.device)
        x = self.embeddings(input_ids, positions)
        for layer in self.layers:
            x = layer(x, layout)
        return x
