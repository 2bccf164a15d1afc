"""Build a model from a checkpoint: an HF directory (config.json + *.safetensors) or a GGUF file.

Both sources are turned into the same thing, an HF-style config dict and a stream of
``(hf_parameter_name, tensor)`` pairs, so one weight-loading path serves both.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from engine_core.config import ModelConfig
from engine_core.models.layers import default_weight_loader
from engine_core.models.llama import LlamaConfig, LlamaForCausalLM
from engine_core.models.registry import get_model_architecture
from kernels.attention.base import AttentionBackend
from kernels.linear import cpu_has_native_bf16

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# GGUF tensor names (after the "blk.N." prefix) -> HF names (after "model.layers.N.").
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA or a CPU with native bf16 math, float32 otherwise
    (emulated bf16 on CPU is slower than float32)."""
    if name != "auto":
        return _DTYPES[name]
    if device is not None and device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def load_model(model_config: ModelConfig, attn_backend_cls: type[AttentionBackend],
               device: torch.device) -> tuple[LlamaForCausalLM, LlamaConfig]:
    path = model_config.resolved_path()
    if path.endswith(".gguf"):
        hf_config, num_tensors, tensors = read_gguf(path)
    else:
        hf_config, num_tensors, tensors = read_hf_dir(path)
    architecture = (hf_config.get("architectures") or [hf_config.get("model_type", "")])[0]
    model_cls, config_cls = get_model_architecture(architecture)
    config = config_cls.from_hf_dict(hf_config)

    attn_backend = attn_backend_cls(config.num_heads, config.num_kv_heads, config.head_dim,
                                    config.head_dim ** -0.5)
    model = model_cls(config, attn_backend)
    # Cast before loading: each checkpoint tensor is converted while it is copied in.
    model.to(device=device, dtype=resolve_dtype(model_config.dtype, device))
    load_weights(model, tqdm(tensors, total=num_tensors, desc=f"loading {os.path.basename(path)}",
                             unit="tensor"))
    return model.eval().requires_grad_(False), config


def load_weights(model: LlamaForCausalLM, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Copy HF-named tensors into the model, routing q/k/v and gate/up into their fused
    parameters. Every parameter must be covered."""

    def route(hf_name: str) -> tuple[str, int | None] | None:
        name = hf_name.removeprefix("model.")
        if "rotary_emb" in name or (model.config.tie_word_embeddings and name == "lm_head.weight"):
            return None
        for checkpoint_part, (fused_part, shard) in model.packed_modules_mapping.items():
            if f".{checkpoint_part}." in name:
                return name.replace(f".{checkpoint_part}.", f".{fused_part}."), shard
        return name, None

    copy_weights(model, weights, route)


@torch.no_grad()
def copy_weights(model: torch.nn.Module, weights: Iterator[tuple[str, torch.Tensor]],
                 route: Callable[[str], tuple[str, int | None] | None]) -> None:
    """Copy each checkpoint tensor into the parameter ``route`` names (None skips it), through
    the parameter's own weight loader (fused shards, tensor-parallel splits). Every parameter
    must be covered: a tied lm_head is listed once, as the embedding."""
    params = dict(model.named_parameters())
    missing = set(params)
    for hf_name, tensor in weights:
        target = route(hf_name)
        if target is None:
            continue
        name, shard_id = target
        if name not in params:
            raise KeyError(f"checkpoint tensor {hf_name!r} has no matching model parameter {name!r}")
        param = params[name]
        getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard_id)
        missing.discard(name)
    if missing:
        raise ValueError(f"checkpoint lacks weights for: {', '.join(sorted(missing))}")


# ----------------------------------------------------------------------------- HF directory

def read_hf_dir(path: str) -> tuple[dict, int, Iterator[tuple[str, torch.Tensor]]]:
    from safetensors import safe_open

    with open(os.path.join(path, "config.json")) as f:
        hf_config = json.load(f)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    num_tensors = 0
    for file in files:
        with safe_open(file, framework="pt") as f:
            num_tensors += len(f.keys())

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for file in files:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield name, f.get_tensor(name)

    return hf_config, num_tensors, tensors()


# ----------------------------------------------------------------------------- GGUF file

def read_gguf(path: str) -> tuple[dict, int, Iterator[tuple[str, torch.Tensor]]]:
    import gguf

    reader = gguf.GGUFReader(path)
    hf_config = gguf_hf_config(reader)
    # llama.cpp permutes the q/k rows of llama models into its interleaved rotary layout.
    unpermute = hf_config["model_type"] == "llama"
    num_heads, num_kv_heads = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for t in reader.tensors:
            if t.name == "rope_freqs.weight":
                continue  # derived from the config's rope settings instead
            weight = gguf.quants.dequantize(t.data, t.tensor_type)  # [out, in] float32, HF layout
            if unpermute and ".attn_q." in t.name:
                weight = reverse_gguf_rotary_permute(weight, num_heads)
            elif unpermute and ".attn_k." in t.name:
                weight = reverse_gguf_rotary_permute(weight, num_kv_heads)
            # Unquantized tensors are views of the read-only mmap: copy those.
            yield gguf_to_hf_name(t.name), torch.from_numpy(np.require(weight, requirements="CW"))

    return hf_config, len(reader.tensors), tensors()


def reverse_gguf_rotary_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row order (pairs interleaved) back to HF's (halves)."""
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_to_hf_name(name: str) -> str:
    stem, _, kind = name.rpartition(".")  # kind: weight | bias
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        return f"model.layers.{layer}.{_GGUF_LAYER_NAMES[part]}.{kind}"
    return f"{_GGUF_GLOBAL_NAMES[stem]}.{kind}"


def gguf_hf_config(reader) -> dict:
    """The HF config.json equivalent of a GGUF file's metadata."""
    def field(key: str, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    get_model_architecture(arch)  # fail early with the list of supported ones
    tokens = field("tokenizer.ggml.tokens", [])
    hidden, heads = field(f"{arch}.embedding_length"), field(f"{arch}.attention.head_count")
    rope_parameters = {"rope_type": "default", "rope_theta": field(f"{arch}.rope.freq_base", 10000.0)}
    if field(f"{arch}.rope.scaling.type") == "linear":
        rope_parameters.update(rope_type="linear", factor=field(f"{arch}.rope.scaling.factor"))
    return {
        "model_type": arch,
        "vocab_size": field(f"{arch}.vocab_size") or len(tokens),
        "hidden_size": hidden,
        "intermediate_size": field(f"{arch}.feed_forward_length"),
        "num_hidden_layers": field(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv", heads),
        "head_dim": field(f"{arch}.attention.key_length", hidden // heads),
        "rms_norm_eps": field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_parameters": rope_parameters,
        "max_position_embeddings": field(f"{arch}.context_length", 4096),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
    }
