"""Serving benchmark for any OpenAI-compatible server: TTFT, TPOT, latency, throughput.

Completions prompts are random token ids, so the input length is exact without a
tokenizer; ``ignore_eos`` with ``max_tokens`` makes the output length exact too.
Chat prompts are random words (about one token each). Only ``--base-url`` is contacted.

    python -m tools.bench_serving --num-prompts 32 --concurrency 8 --input-len 128 --output-len 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx

TOKEN_ID_RANGE = (100, 20000)  # clear of special tokens, inside any real vocabulary
CHAT_WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house",
              "in", "sun", "we", "go", "up", "day", "old", "tree", "blue", "sky", "far", "away")


@dataclass(frozen=True)
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    model: str | None = None
    num_prompts: int = 100
    concurrency: int = 8
    input_len: int = 128
    output_len: int = 128
    stream: bool = True
    endpoint: str = "completions"  # or "chat"
    seed: int = 0
    timeout: float = 600.0  # seconds for the whole run; unfinished requests count as failed
    api_key: str | None = None


@dataclass
class RequestResult:
    ok: bool
    latency: float = 0.0
    ttft: float | None = None  # seconds to the first non-empty text chunk (streaming only)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def make_payload(cfg: BenchConfig, model: str, rng: random.Random) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "max_tokens": cfg.output_len, "ignore_eos": True,
                               "stream": cfg.stream}
    if cfg.stream:
        payload["stream_options"] = {"include_usage": True}
    if cfg.endpoint == "chat":
        words = " ".join(rng.choice(CHAT_WORDS) for _ in range(cfg.input_len))
        payload["messages"] = [{"role": "user", "content": words}]
    else:
        payload["prompt"] = [rng.randrange(*TOKEN_ID_RANGE) for _ in range(cfg.input_len)]
    return payload


async def sse_payloads(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """JSON payloads of ``data: `` lines until ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue  # blank separators, comments, other SSE fields
        data = line[len("data: "):].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _chunk_text(payload: dict[str, Any]) -> str:
    text = ""
    for choice in payload.get("choices") or ():
        delta = choice.get("delta")
        text += (delta.get("content") or "") if delta is not None else (choice.get("text") or "")
    return text


def _error_message(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message", payload["error"]))
    return str(payload)[:300]


async def _stream(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> RequestResult:
    start = time.perf_counter()
    result = RequestResult(ok=False)
    text_chunks = 0
    async with client.stream("POST", path, json=payload) as response:
        if response.status_code != 200:
            body = await response.aread()
            result.error = f"HTTP {response.status_code}: {_error_message(_json_or_text(body))}"
            return result
        async for chunk in sse_payloads(response):
            if "error" in chunk:
                result.error = _error_message(chunk)
                return result
            if _chunk_text(chunk):
                text_chunks += 1
                if result.ttft is None:
                    result.ttft = time.perf_counter() - start
            usage = chunk.get("usage")
            if usage:
                result.prompt_tokens = usage.get("prompt_tokens", 0)
                result.output_tokens = usage.get("completion_tokens", 0)
    result.latency = time.perf_counter() - start
    # Without usage, count chunks: servers send about one token per chunk.
    result.output_tokens = result.output_tokens or text_chunks
    result.ok = True
    return result


async def _non_stream(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> RequestResult:
    start = time.perf_counter()
    response = await client.post(path, json=payload)
    latency = time.perf_counter() - start
    body = _json_or_text(response.content)
    if response.status_code != 200:
        return RequestResult(ok=False, error=f"HTTP {response.status_code}: {_error_message(body)}")
    usage = body.get("usage") or {}
    return RequestResult(ok=True, latency=latency, prompt_tokens=usage.get("prompt_tokens", 0),
                         output_tokens=usage.get("completion_tokens", 0))


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


async def send_request(client: httpx.AsyncClient, cfg: BenchConfig, payload: dict[str, Any]) -> RequestResult:
    path = "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions"
    try:
        result = await (_stream if cfg.stream else _non_stream)(client, path, payload)
    except (httpx.HTTPError, ValueError) as exc:
        return RequestResult(ok=False, error=f"{type(exc).__name__}: {exc}")
    if result.ok and not result.prompt_tokens and cfg.endpoint == "completions":
        result.prompt_tokens = cfg.input_len
    return result


async def first_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Sends ``num_prompts`` requests, at most ``concurrency`` at a time, within ``timeout`` seconds."""
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    base_url = cfg.base_url.rstrip("/").removesuffix("/v1")
    # trust_env=False: no proxies or netrc, the run talks to base_url and nothing else.
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(cfg.timeout),
                                 limits=httpx.Limits(max_connections=cfg.concurrency),
                                 trust_env=False) as client:
        model = cfg.model or await first_model(client)
        rng = random.Random(cfg.seed)
        payloads = [make_payload(cfg, model, rng) for _ in range(cfg.num_prompts)]
        semaphore = asyncio.Semaphore(cfg.concurrency)

        async def limited(payload: dict[str, Any]) -> RequestResult:
            async with semaphore:
                return await send_request(client, cfg, payload)

        start = time.perf_counter()
        tasks = [asyncio.create_task(limited(p)) for p in payloads]
        done, pending = await asyncio.wait(tasks, timeout=cfg.timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
    results = [t.result() if t in done else RequestResult(ok=False, error="timed out") for t in tasks]
    return {"config": asdict(cfg) | {"model": model, "api_key": None},
            "summary": summarize(results, duration),
            "requests": [asdict(r) | {"tpot": r.tpot} for r in results]}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _stats_ms(values: list[float | None]) -> dict[str, float | None]:
    present = [v * 1000.0 for v in values if v is not None]
    if not present:
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": sum(present) / len(present), "p50": percentile(present, 50),
            "p99": percentile(present, 99)}


def summarize(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    input_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "output_throughput": output_tokens / duration if duration else 0.0,
        "total_token_throughput": (input_tokens + output_tokens) / duration if duration else 0.0,
        "ttft_ms": _stats_ms([r.ttft for r in ok]),
        "tpot_ms": _stats_ms([r.tpot for r in ok]),
        "latency_ms": _stats_ms([r.latency for r in ok]),
    }


def format_table(summary: dict[str, Any]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"{'Successful requests':<28}{summary['completed']:>12}",
        f"{'Failed requests':<28}{summary['failed']:>12}",
        f"{'Duration (s)':<28}{summary['duration_s']:>12.2f}",
        f"{'Input tokens':<28}{summary['input_tokens']:>12}",
        f"{'Output tokens':<28}{summary['output_tokens']:>12}",
        f"{'Request throughput (req/s)':<28}{summary['request_throughput']:>12.2f}",
        f"{'Output throughput (tok/s)':<28}{summary['output_throughput']:>12.2f}",
        f"{'Total throughput (tok/s)':<28}{summary['total_token_throughput']:>12.2f}",
        "",
        f"{'Metric (ms)':<16}{'mean':>12}{'p50':>12}{'p99':>12}",
    ]
    for label, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("Latency", "latency_ms")):
        stats = summary[key]
        lines.append(f"{label:<16}{num(stats['mean']):>12}{num(stats['p50']):>12}{num(stats['p99']):>12}")
    lines += [f"error: {e}" for e in summary["errors"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=BenchConfig.base_url)
    parser.add_argument("--model", default=None, help="Default: the first model of /v1/models.")
    parser.add_argument("--num-prompts", type=int, default=BenchConfig.num_prompts)
    parser.add_argument("--concurrency", type=int, default=BenchConfig.concurrency)
    parser.add_argument("--input-len", type=int, default=BenchConfig.input_len)
    parser.add_argument("--output-len", type=int, default=BenchConfig.output_len)
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=BenchConfig.timeout,
                        help="Seconds for the whole run; requests still running then count as failed.")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--result-json", default=None, help="Write config, summary and per-request results.")
    args = parser.parse_args(argv)
    for name in ("num_prompts", "concurrency", "input_len", "output_len", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    fields = {k: v for k, v in vars(args).items() if k != "result_json"}
    return BenchConfig(**fields), args.result_json


def main(argv: list[str] | None = None) -> int:
    cfg, result_json = parse_args(argv)
    try:
        report = asyncio.run(run_benchmark(cfg))
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:  # e.g. no server, no models
        print(f"benchmark could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(format_table(report["summary"]))
    if result_json:
        with open(result_json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["summary"]["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
