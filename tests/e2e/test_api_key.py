"""--api-key: /v1 routes need the bearer token; /health, /metrics and /version stay open."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e

KEY = "sk-kestrel-test"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    server = start_server("--api-key", KEY, "--kv-cache-memory", "0.1", "--max-num-seqs", "4")
    yield server
    server.stop()


def test_missing_or_wrong_key_is_401(keyed_server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{keyed_server.base_url}/v1/models", headers=headers, timeout=10)
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_server.base_url}/v1", api_key="wrong", max_retries=0).models.list()


def test_right_key_is_served(keyed_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{keyed_server.base_url}/v1", api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    assert client.completions.create(model=model, prompt="Hi", max_tokens=2).choices[0].text is not None


@pytest.mark.parametrize("path", ["/health", "/metrics", "/version"])
def test_operational_routes_stay_open(keyed_server: Server, path: str) -> None:
    assert httpx.get(f"{keyed_server.base_url}{path}", timeout=30).status_code == 200
