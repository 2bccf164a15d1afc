"""Which task a model is served for: text generation or embeddings. Torch-free: the
launcher resolves the task once, before any child process starts.

``auto`` looks at the checkpoint: an encoder (BERT) architecture in ``config.json``
means embeddings, anything else (and every .gguf, which only carries decoders here)
means generation.
"""

from __future__ import annotations

import json
import os

GENERATE = "generate"
EMBEDDING = "embedding"
TASK_CHOICES = ("auto", GENERATE, EMBEDDING, "embed")
_ALIASES = {"embed": EMBEDDING}

# Encoder architectures the embedding loader can build (HF ``architectures`` or ``model_type``).
EMBEDDING_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "bert")


def transformer_dir(path: str) -> str:
    """Where config.json and the weights live: the directory itself, or the Transformer
    module's folder of an older sentence-transformers layout (``0_BERT/``)."""
    modules_file = os.path.join(path, "modules.json")
    if not os.path.isfile(modules_file):
        return path
    with open(modules_file) as f:
        modules = json.load(f)
    transformer = next((m for m in modules if m.get("type", "").endswith(".Transformer")), {})
    return os.path.join(path, transformer.get("path", ""))


def model_architecture(path: str) -> str:
    """The checkpoint's architecture name; "" for a .gguf or a directory without config.json."""
    if path.endswith(".gguf"):
        return ""
    config_file = os.path.join(transformer_dir(path), "config.json")
    if not os.path.isfile(config_file):
        return ""
    with open(config_file) as f:
        hf_config = json.load(f)
    return (hf_config.get("architectures") or [hf_config.get("model_type", "")])[0]


def resolve_task(task: str, path: str) -> str:
    """``generate`` or ``embedding`` for the model at ``path``; a task the model cannot do
    is refused here, with the flag to use, rather than as a loader error in a child."""
    if task not in TASK_CHOICES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    is_encoder = model_architecture(path) in EMBEDDING_ARCHITECTURES
    natural = EMBEDDING if is_encoder else GENERATE
    wanted = natural if task == "auto" else _ALIASES.get(task, task)
    if wanted != natural:
        kind = "an encoder (BERT)" if is_encoder else "not an encoder (BERT)"
        raise ValueError(f"--task {wanted} does not fit {path}: it is {kind} model; "
                         f"serve it with --task {natural} (or auto)")
    return wanted
