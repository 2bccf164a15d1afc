"""Offline throughput: Kestrel's engine vs transformers ``generate`` on the same prompts.

    .venv/bin/python tools/bench_offline.py [--dtypes float32 bfloat16] [--batches 1 32]

Prompts are random token ids (exact input length); outputs ignore EOS (exact output
length). Prints a markdown table of output tokens/s and, with --profile, where the
time of a batch-1 decode step goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import time

import torch

from engine_core.config import default_model_path
from engine_core.llm import LLM, Generation
from engine_core.request import SamplingParams


def make_prompts(batch: int, input_len: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 20000) for _ in range(input_len)] for _ in range(batch)]


def bench_kestrel(llm: LLM, prompts: list[list[int]], output_len: int) -> float:
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    llm.generate(make_prompts(len(prompts), 8, seed=1), SamplingParams(max_tokens=4, ignore_eos=True))
    start = time.perf_counter()
    generations = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(g.token_ids) == output_len for g in generations)
    return len(prompts) * output_len / elapsed


def bench_transformers(model, prompts: list[list[int]], output_len: int) -> float:
    input_ids = torch.tensor(prompts)
    kwargs = dict(do_sample=False, min_new_tokens=output_len, max_new_tokens=output_len, pad_token_id=0)
    with torch.inference_mode():
        model.generate(input_ids[:, :8], **{**kwargs, "min_new_tokens": 4, "max_new_tokens": 4})
        start = time.perf_counter()
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + output_len
    return len(prompts) * output_len / elapsed


def load_transformers(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=dtype)
    return model.eval()


def profile_decode(llm: LLM, input_len: int, steps: int = 64) -> None:
    """cProfile of batch-1 decode steps: where the per-step Python time goes."""
    params = SamplingParams(max_tokens=steps + 2, temperature=0.0, ignore_eos=True)
    generations = {llm.add(make_prompts(1, input_len)[0], params): Generation([])}
    llm.step_into(generations)  # the prefill step, outside the profile
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        llm.step_into(generations)
    profiler.disable()
    per_step_ms = (time.perf_counter() - start) / steps * 1e3
    llm.run(generations)
    print(f"\nbatch-1 decode step: {per_step_ms:.1f} ms (profiled)")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile batch-1 decode steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dtype_name in args.dtypes:
        llm = LLM(dtype=dtype_name, kv_cache_memory=2.0)
        hf = None if args.skip_transformers else load_transformers(getattr(torch, dtype_name))
        for batch in args.batches:
            prompts = make_prompts(batch, args.input_len)
            ours = bench_kestrel(llm, prompts, args.output_len)
            theirs = bench_transformers(hf, prompts, args.output_len) if hf is not None else float("nan")
            rows.append((dtype_name, batch, ours, theirs))
            print(f"{dtype_name} batch {batch}: kestrel {ours:.1f} tok/s, transformers {theirs:.1f} tok/s",
                  flush=True)
        if args.profile:
            profile_decode(llm, args.input_len)
        del llm, hf
    print(f"\n{args.input_len} in / {args.output_len} out, greedy, {args.threads} threads\n")
    print("| dtype | batch | Kestrel tok/s | transformers tok/s | speed-up |")
    print("|---|---|---|---|---|")
    for dtype_name, batch, ours, theirs in rows:
        print(f"| {dtype_name} | {batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
