"""Process-group lifecycle: clean shutdown, one dead child takes the group down,
and a client that leaves mid-stream frees its request's KV blocks."""

from __future__ import annotations

import re
import signal
import time

import httpx
import psutil
import pytest

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e


def _group(pid: int) -> list[psutil.Process]:
    launcher = psutil.Process(pid)
    return [launcher, *launcher.children(recursive=True)]


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def _metric(base_url: str, name: str) -> int:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\d+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return int(match.group(1))


def test_disconnect_aborts_request_and_frees_blocks(server, model_name) -> None:
    total = _metric(server.base_url, "kestrel:kv_cache_total_blocks")
    body = {"model": model_name, "prompt": "Count forever:", "max_tokens": 3000, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert _metric(server.base_url, "kestrel:num_requests_running") == 1
        assert _metric(server.base_url, "kestrel:kv_cache_free_blocks") < total
    # The connection is closed: the request must leave the engine and give its blocks back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (_metric(server.base_url, "kestrel:num_requests_running") == 0
                and _metric(server.base_url, "kestrel:kv_cache_free_blocks") == total):
            break
        time.sleep(0.2)
    assert _metric(server.base_url, "kestrel:num_requests_running") == 0
    assert _metric(server.base_url, "kestrel:kv_cache_free_blocks") == total
    assert _metric(server.base_url, "kestrel:aborted_requests_total") >= 1


def test_sigterm_stops_every_process() -> None:
    server = start_server("--kv-cache-memory", "0.2")
    group = _group(server.proc.pid)
    assert len(group) == 4  # launcher + engine core + detokenizer + frontend
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert _wait_gone(group, timeout=5) == []


def test_dead_child_takes_the_group_down() -> None:
    server = start_server("--kv-cache-memory", "0.2")
    group = _group(server.proc.pid)
    engine = next(p for p in group if "engine_core" in " ".join(p.cmdline()))
    engine.kill()
    assert server.proc.wait(timeout=15) != 0
    assert _wait_gone(group, timeout=5) == []
