"""In-process offline API over EngineCore, for tests and benchmarks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from engine_core.config import EngineConfig
from engine_core.core import EngineCore
from engine_core.messages.engine_input import AddRequest, DetokenizeParams
from engine_core.request import FinishReason, SamplingParams


@dataclass
class Generation:
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None


class LLM:
    """``LLM(model).generate(prompts, params)`` runs every prompt together through
    the continuous-batching engine and returns the generated token ids."""

    def __init__(self, config: EngineConfig | None = None, **options) -> None:
        """``options``: any field of ModelConfig, CacheConfig or SchedulerConfig."""
        self.config = config or EngineConfig.from_flat(options)
        self.engine = EngineCore(self.config)
        self._ids = itertools.count()
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from engine_core.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model.resolved_path())
        return self._tokenizer

    def add(self, prompt_token_ids: list[int], params: SamplingParams) -> str:
        request_id = f"offline-{next(self._ids)}"
        self.engine.add_request(AddRequest(request_id, prompt_token_ids, params, DetokenizeParams()))
        return request_id

    def run(self, generations: dict[str, Generation]) -> None:
        """Step until every request in ``generations`` has finished."""
        while any(g.finish_reason is None for g in generations.values()):
            self.step_into(generations)

    def step_into(self, generations: dict[str, Generation]) -> None:
        for delta in self.engine.step().deltas:
            generation = generations[delta.request_id]
            generation.token_ids.extend(delta.new_token_ids)
            if delta.finish_reason >= 0:
                generation.finish_reason = FinishReason(delta.finish_reason)

    def generate(self, prompts: list[list[int]] | list[str],
                 params: SamplingParams | list[SamplingParams]) -> list[Generation]:
        token_prompts = [self.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
        per_prompt = params if isinstance(params, list) else [params] * len(token_prompts)
        pairs = zip(token_prompts, per_prompt, strict=True)
        generations = {self.add(ids, p): Generation(ids) for ids, p in pairs}
        self.run(generations)
        return list(generations.values())
