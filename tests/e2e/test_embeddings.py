"""POST /v1/embeddings on a real `kestrel serve MINILM --task embedding` process group,
driven by the official openai client and checked against transformers."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import torch
import transformers

from tests.e2e.conftest import Server, start_server
from tests.model.test_bert import hf_mean_embeddings, minilm_path

pytestmark = pytest.mark.e2e

TEXTS = [
    "A man is eating food.",
    "ok",
    "The new movie is awesome, and everyone in the theatre seemed to agree with that opinion "
    "after the long and dramatic final scene.",
    "What is the capital of France?",
    "Two dogs play in the snow.",
]
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
VOCAB_SIZE = 30522


@pytest.fixture(scope="module")
def embed_server() -> Iterator[Server]:
    srv = start_server(minilm_path(), "--task", "embedding", "--dtype", "float32")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def embed_client(embed_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{embed_server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def embed(client: openai.OpenAI, inputs, **kw) -> np.ndarray:
    reply = client.embeddings.create(model="model", input=inputs, encoding_format="float", **kw)
    assert [d.index for d in reply.data] == list(range(len(reply.data)))
    return np.array([d.embedding for d in reply.data], dtype=np.float32)


def test_batch_matches_transformers_mean_pooling(embed_client, tokenizer) -> None:
    ours = embed(embed_client, TEXTS)
    torch.set_num_threads(1)
    hf_model = transformers.AutoModel.from_pretrained(minilm_path(), dtype=torch.float32).eval()
    reference = hf_mean_embeddings(hf_model, [tokenizer.encode(t) for t in TEXTS]).numpy()
    assert ours.shape == reference.shape == (len(TEXTS), 384)
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_model_name_is_the_directory(embed_client) -> None:
    assert [m.id for m in embed_client.models.list().data] == ["model"]


def test_base64_equals_float(embed_client) -> None:
    # Not bit-exact: the two inputs may share an engine step or not, and batching moves the last bits.
    floats = embed(embed_client, TEXTS[:2])
    decoded_by_client = embed_client.embeddings.create(model="model", input=TEXTS[:2])  # base64 on the wire
    np.testing.assert_allclose(np.array([d.embedding for d in decoded_by_client.data], np.float32), floats,
                               atol=1e-5)
    raw = embed_client.embeddings.create(model="model", input=TEXTS[:2], encoding_format="base64")
    ours = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    np.testing.assert_allclose(ours, floats, atol=1e-5)


def test_token_ids_equal_text_and_usage_counts_every_token(embed_client, tokenizer) -> None:
    token_lists = [tokenizer.encode(t) for t in TEXTS]
    by_text = embed_client.embeddings.create(model="model", input=TEXTS, encoding_format="float")
    by_ids = embed_client.embeddings.create(model="model", input=token_lists, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in by_ids.data]),
                               np.array([d.embedding for d in by_text.data]), atol=1e-5)
    expected = sum(len(ids) for ids in token_lists)
    for reply in (by_text, by_ids):
        assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected
    single = embed_client.embeddings.create(model="model", input=token_lists[0], encoding_format="float")
    assert len(single.data) == 1 and single.usage.prompt_tokens == len(token_lists[0])


def test_truncate_keeps_the_last_tokens(embed_client, tokenizer) -> None:
    long_ids = tokenizer.encode(" ".join(["river"] * 20 + ["mountain lake forest"] * 100))
    assert len(long_ids) > MAX_SEQ_LENGTH
    truncated = embed_client.embeddings.create(model="model", input=[long_ids], encoding_format="float",
                                               extra_body={"truncate_prompt_tokens": 12})
    tail = embed(embed_client, [long_ids[-12:]])
    assert truncated.usage.prompt_tokens == 12
    np.testing.assert_allclose(np.array(truncated.data[0].embedding), tail[0], atol=1e-5)


def test_messages_are_rendered_with_the_chat_template(embed_server: Server, embed_client) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    body = {"model": "model", "chat_template": template, "add_generation_prompt": False,
            "messages": [{"role": "user", "content": "hello there"}]}
    reply = httpx.post(f"{embed_server.base_url}/v1/embeddings", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    # A chat request adds no special tokens by default: the template writes what it wants.
    as_text = embed(embed_client, "user: hello there\n", extra_body={"add_special_tokens": False})
    np.testing.assert_allclose(np.array(reply.json()["data"][0]["embedding"]), as_text[0], atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(input=""), "empty"),
    (dict(input=[]), "empty"),
    (dict(input="word " * 400), f"maximum context length is {MAX_SEQ_LENGTH} tokens"),
    (dict(input=[[101, VOCAB_SIZE + 5, 102]]), f"Token id {VOCAB_SIZE + 5} is out of vocabulary"),
    (dict(input="hi", dimensions=8), "dimensions"),
])
def test_bad_requests_are_400(embed_client, kwargs: dict, message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message):
        embed_client.embeddings.create(model="model", encoding_format="float", **kwargs)


def test_chat_on_the_embedding_server_names_the_generate_task(embed_client) -> None:
    with pytest.raises(openai.BadRequestError, match="--task generate"):
        embed_client.chat.completions.create(model="model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="--task generate"):
        embed_client.completions.create(model="model", prompt="hi")


def test_embeddings_on_the_generate_server_name_the_embedding_task(client, model_name) -> None:
    with pytest.raises(openai.BadRequestError, match="--task embedding"):
        client.embeddings.create(model=model_name, input="hello", encoding_format="float")


def test_server_still_healthy_after_errors(embed_server: Server, embed_client) -> None:
    assert httpx.get(f"{embed_server.base_url}/health", timeout=10).status_code == 200
    assert embed(embed_client, "still here").shape == (1, 384)
