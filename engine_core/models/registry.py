"""Architecture names (HF ``architectures`` / ``model_type`` or GGUF ``general.architecture``)
-> (model class, config class)."""

from __future__ import annotations

from torch import nn

from engine_core.models.llama import LlamaConfig, LlamaForCausalLM

_ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    # HF config.json "architectures"
    "LlamaForCausalLM": (LlamaForCausalLM, LlamaConfig),
    "MistralForCausalLM": (LlamaForCausalLM, LlamaConfig),
    "Qwen2ForCausalLM": (LlamaForCausalLM, LlamaConfig),
    # HF "model_type" and GGUF "general.architecture"
    "llama": (LlamaForCausalLM, LlamaConfig),
    "mistral": (LlamaForCausalLM, LlamaConfig),
    "qwen2": (LlamaForCausalLM, LlamaConfig),
}


def get_model_architecture(name: str) -> tuple[type[nn.Module], type]:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        supported = ", ".join(sorted(_ARCHITECTURES))
        raise ValueError(f"unsupported model architecture {name!r}; supported: {supported}") from None
