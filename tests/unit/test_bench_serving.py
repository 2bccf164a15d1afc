"""bench_serving against a tiny fake OpenAI server (plain asyncio HTTP/1.1 on 127.0.0.1) whose
delays are known, so the measured statistics can be checked against what the server did."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tools.bench_serving import BenchConfig, main, percentile, run_benchmark

pytestmark = pytest.mark.unit

MODEL = "fake-model"


class FakeOpenAIServer:
    """Streams one chunk per requested token: the first after ``ttft_for(body)`` seconds, the
    rest ``itl`` apart. ``fail_for(body)`` may return "http" or "stream" to inject an error."""

    def __init__(self, itl: float = 0.01, send_usage: bool = True) -> None:
        self.itl = itl
        self.send_usage = send_usage
        self.ttft_for: Callable[[dict[str, Any]], float] = lambda body: 0.05
        self.fail_for: Callable[[dict[str, Any]], str | None] = lambda body: None
        self.bodies: list[dict[str, Any]] = []
        self.ttfts: list[float] = []
        self.in_flight = self.max_in_flight = 0
        self.paths: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(5)
        self.base_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request_line := await reader.readline():
                method, path, _ = request_line.decode().split(" ", 2)
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    key, value = line.decode().split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.paths.append(path)
                await self._route(method, path, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path == "/v1/models":
            return await self._send_json(writer, 200, {"object": "list", "data": [{"id": MODEL}]})
        body = json.loads(raw)
        self.bodies.append(body)
        failure = self.fail_for(body)
        if failure == "http":
            error = {"error": {"message": "bad things", "type": "invalid_request_error", "param": None,
                               "code": None}}
            return await self._send_json(writer, 400, error)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._generate(path.endswith("chat/completions"), body, failure, writer)
        finally:
            self.in_flight -= 1

    async def _generate(self, chat: bool, body: dict[str, Any], failure: str | None,
                        writer: asyncio.StreamWriter) -> None:
        num_tokens, ttft = body["max_tokens"], self.ttft_for(body)
        self.ttfts.append(ttft)
        prompt_tokens = len(body.get("prompt") or body["messages"][0]["content"].split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": num_tokens,
                 "total_tokens": prompt_tokens + num_tokens}
        if not body["stream"]:
            await asyncio.sleep(ttft + self.itl * (num_tokens - 1))
            response = {"choices": [{"text": "x" * num_tokens}], "usage": usage}
            return await self._send_json(writer, 200, response)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        if chat:  # the role chunk carries no text and must not count as the first token
            await self._send_event(writer, {"choices": [{"delta": {"role": "assistant", "content": ""}}]})
        await asyncio.sleep(ttft)
        for i in range(num_tokens):
            if i:
                await asyncio.sleep(self.itl)
            if i == 1 and failure == "stream":
                await self._send_event(writer, {"error": {"message": "engine died"}})
                break
            choice = {"delta": {"content": "tok"}} if chat else {"text": "tok"}
            await self._send_event(writer, {"choices": [choice]})
        if self.send_usage:
            await self._send_event(writer, {"choices": [], "usage": usage})
        writer.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _send_event(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
        data = b"data: " + json.dumps(payload).encode() + b"\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()

    @staticmethod
    async def _send_json(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, len(data), data))
        await writer.drain()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def bench(server: FakeOpenAIServer, **overrides: Any) -> dict[str, Any]:
    fields = dict(base_url=server.base_url, num_prompts=6, concurrency=3, input_len=12, output_len=5,
                  timeout=30.0)
    return asyncio.run(run_benchmark(BenchConfig(**(fields | overrides))))


# Only lower bounds against the fake server's sleeps: a busy 2-core machine can delay any
# chunk by an unbounded amount, but never deliver it before the server sent it.


def test_requests_have_exact_lengths_and_discover_the_model(server: FakeOpenAIServer) -> None:
    report = bench(server, seed=3)
    assert server.paths[0] == "/v1/models" and report["config"]["model"] == MODEL
    assert len(server.bodies) == 6
    for body in server.bodies:
        assert body["model"] == MODEL and body["max_tokens"] == 5 and body["ignore_eos"] is True
        assert len(body["prompt"]) == 12 and all(100 <= t < 20000 for t in body["prompt"])
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    first_prompts = [b["prompt"] for b in server.bodies]
    server.bodies.clear()
    bench(server, seed=3)
    assert sorted(b["prompt"] for b in server.bodies) == sorted(first_prompts)  # seeded
    server.bodies.clear()
    bench(server, seed=4)
    assert sorted(b["prompt"] for b in server.bodies) != sorted(first_prompts)


def test_streaming_statistics_follow_the_server_delays(server: FakeOpenAIServer) -> None:
    server.ttft_for = lambda body: 0.05 if body["prompt"][0] % 2 else 0.3  # two well-separated groups
    report = bench(server, num_prompts=8, output_len=6)
    summary, requests = report["summary"], report["requests"]
    assert summary["completed"] == 8 and summary["failed"] == 0
    assert summary["output_tokens"] == 8 * 6 and summary["input_tokens"] == 8 * 12
    measured = sorted(r["ttft"] for r in requests)
    for got, slept in zip(measured, sorted(server.ttfts), strict=True):
        assert slept <= got
    for r in requests:
        assert r["ttft"] <= r["latency"]
        assert r["tpot"] == pytest.approx((r["latency"] - r["ttft"]) / 5)  # over the 5 later tokens
        assert r["latency"] >= min(server.ttfts) + 5 * server.itl
    ttft_ms = [t * 1000 for t in measured]
    assert summary["ttft_ms"]["p50"] == pytest.approx(percentile(ttft_ms, 50))
    assert summary["ttft_ms"]["mean"] == pytest.approx(sum(ttft_ms) / 8)
    assert summary["ttft_ms"]["p99"] == pytest.approx(percentile(ttft_ms, 99))
    assert summary["output_throughput"] == pytest.approx(48 / summary["duration_s"])
    assert server.max_in_flight == 3


def test_chat_ttft_waits_for_the_first_content(server: FakeOpenAIServer) -> None:
    server.ttft_for = lambda body: 0.2
    report = bench(server, endpoint="chat", num_prompts=3)
    assert all(len(b["messages"][0]["content"].split()) == 12 for b in server.bodies)
    assert all(r["ttft"] >= 0.2 for r in report["requests"])
    assert report["summary"]["output_tokens"] == 15


def test_chunks_are_counted_without_usage() -> None:
    with FakeOpenAIServer(send_usage=False) as server:
        report = bench(server, num_prompts=2, output_len=7)
    assert [r["output_tokens"] for r in report["requests"]] == [7, 7]
    assert [r["prompt_tokens"] for r in report["requests"]] == [12, 12]


def test_non_streaming_measures_latency_only(server: FakeOpenAIServer) -> None:
    report = bench(server, stream=False, num_prompts=3, output_len=4)
    assert all(b["stream"] is False and "stream_options" not in b for b in server.bodies)
    for r in report["requests"]:
        assert r["ttft"] is None and r["tpot"] is None and r["output_tokens"] == 4
        assert 0.05 + 3 * server.itl <= r["latency"]
    assert report["summary"]["ttft_ms"]["p50"] is None


def test_errors_count_as_failures(server: FakeOpenAIServer) -> None:
    kinds = iter(["http", "stream", None, None])
    server.fail_for = lambda body: next(kinds)
    summary = bench(server, num_prompts=4, concurrency=1)["summary"]
    assert summary["completed"] == 2 and summary["failed"] == 2
    assert any("HTTP 400: bad things" in e for e in summary["errors"])
    assert "engine died" in summary["errors"]


def test_the_run_is_bounded_by_the_timeout(server: FakeOpenAIServer) -> None:
    server.ttft_for = lambda body: 30.0
    start = time.perf_counter()
    summary = bench(server, num_prompts=4, concurrency=2, timeout=0.5)["summary"]
    assert time.perf_counter() - start < 15.0  # far below the 30 s the server would take
    assert summary["completed"] == 0 and summary["failed"] == 4
    assert len(server.bodies) == 2  # the queued half never started


def test_cli_writes_the_result_json(server: FakeOpenAIServer, tmp_path: Any, capsys: Any) -> None:
    out = tmp_path / "result.json"
    code = main(["--base-url", server.base_url + "/v1", "--num-prompts", "3", "--concurrency", "2",
                 "--input-len", "4", "--output-len", "3", "--model", "chosen", "--result-json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["summary"]["completed"] == 3 and report["config"]["model"] == "chosen"
    assert "/v1/models" not in server.paths and {b["model"] for b in server.bodies} == {"chosen"}
    assert "TTFT" in capsys.readouterr().out


def test_cli_reports_an_unreachable_server(capsys: Any) -> None:
    assert main(["--base-url", "http://127.0.0.1:9", "--num-prompts", "1", "--timeout", "2"]) == 2
    assert "could not start" in capsys.readouterr().err


def test_percentile_matches_linear_interpolation() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)
