"""What every route shares: the engine client, tokenizer, model names, metrics."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine_core.config import FrontendConfig
from engine_core.messages.engine_output import EngineStats
from frontend.client import EngineClient
from frontend.errors import bad_request, model_not_found
from frontend.responses import ModelCard, ModelList


@dataclass
class Metrics:
    """Prometheus text counters kept by the frontend; gauges come from the engine."""

    finished: Counter[str] = field(default_factory=Counter)  # by finish reason
    prompt_tokens: int = 0
    generation_tokens: int = 0

    def record(self, finish_reason: str, prompt_tokens: int, generation_tokens: int) -> None:
        self.finished[finish_reason] += 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens

    def render(self, stats: EngineStats, num_aborted: int) -> str:
        lines = [
            f"kestrel:num_requests_running {stats.num_running}",
            f"kestrel:num_requests_waiting {stats.num_waiting}",
            f"kestrel:kv_cache_free_blocks {stats.num_free_blocks}",
            f"kestrel:kv_cache_total_blocks {stats.num_total_blocks}",
            f"kestrel:num_preemptions_total {stats.num_preemptions}",
            f"kestrel:prefix_cache_queries_total {stats.prefix_cache_queries}",
            f"kestrel:prefix_cache_hits_total {stats.prefix_cache_hits}",
            f"kestrel:prompt_tokens_total {self.prompt_tokens}",
            f"kestrel:generation_tokens_total {self.generation_tokens}",
            f"kestrel:aborted_requests_total {num_aborted}",
        ]
        lines += [f'kestrel:request_success_total{{finished_reason="{reason}"}} {count}'
                  for reason, count in sorted(self.finished.items())]
        return "\n".join(lines) + "\n"


@dataclass
class ServerState:
    config: FrontendConfig
    client: EngineClient
    tokenizer: Any
    served_names: tuple[str, ...]
    max_model_len: int
    task: str = "generate"  # resolved by the launcher: "generate" or "embedding"
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def create(cls, config: FrontendConfig, model_path: str, client: EngineClient,
               max_model_len: int, task: str) -> ServerState:
        from engine_core.tokenizer import load_tokenizer

        names = config.served_model_name or (default_model_name(model_path),)
        return cls(config, client, load_tokenizer(model_path), tuple(names), max_model_len, task)

    def check_vocab(self, token_ids: list[int], param: str) -> None:
        """Client-given token ids must exist in the vocabulary (the embedding table would fail)."""
        vocab_size = len(self.tokenizer)
        bad = next((t for t in token_ids if t >= vocab_size), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is out of vocabulary (size {vocab_size}).", param)

    def check_model(self, name: str | None) -> None:
        if name not in self.served_names:
            raise model_not_found(str(name))

    def check_task(self, needed: str, endpoint: str) -> None:
        """A 400 naming the flag that would serve ``endpoint``, when this server runs another task."""
        if self.task != needed:
            raise bad_request(f"{endpoint} is not served by this server (started with --task {self.task}); "
                              f"it needs a server started with `--task {needed}`.")

    def model_list(self) -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=self.created, root=self.served_names[0],
                                         max_model_len=self.max_model_len) for name in self.served_names])


def default_model_name(model_path: str) -> str:
    """``.../SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct``."""
    name = os.path.basename(os.path.normpath(model_path))
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
        stem, dot, quant = name.rpartition(".")
        if dot and quant[:1] in "QFqfI" and any(c.isdigit() for c in quant):
            name = stem
    return name
