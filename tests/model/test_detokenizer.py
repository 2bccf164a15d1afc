"""Detokenizer with the SmolLM2 GGUF tokenizer (byte-level BPE): incremental text,
the request-level Detokenizer on hand-built engine outputs, and the ZeroMQ process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import zmq

from detokenizer.incremental import IncrementalDetokenizer
from detokenizer.process import Detokenizer
from engine_core.config import default_model_path
from engine_core.messages import Codec
from engine_core.messages.engine_input import AbortRequest, DetokenizeParams, EngineInput
from engine_core.messages.engine_output import (
    EngineOutput,
    EngineStats,
    Logprobs,
    NewRequest,
    Pong,
    RequestDelta,
    StepOutputs,
)
from engine_core.messages.frontend_input import FrontendInput, RequestOutput, RequestOutputs
from engine_core.request import FinishReason
from engine_core.tokenizer import load_tokenizer

pytestmark = pytest.mark.model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧 in one line.",
    "中文测试：你好，世界。日本語のテキスト、한국어 문장.",
    "Accents: café, naïve, résumé, Ångström, Straße, ñandú.",
    "Mixed  whitespace\n\n\ttabs and   spaces, math ∑∫√ and arrows →⇒.",
    "<|im_start|>user\nHi there 🙂<|im_end|>\n<|im_start|>assistant\n漢字 ok<|im_end|>",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(default_model_path())


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def detokenize_in_chunks(
    tokenizer: Any, prompt: list[int], output: list[int], skip_special: bool, rng: random.Random
) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip_special)
    deltas, start = [], 0
    while start < len(output):
        end = start + rng.choice([1, 1, 1, 2, 3])  # engine steps are mostly one token
        deltas.append(detok.add_tokens(output[start:end]))
        start = end
    deltas.append(detok.flush())
    return deltas


# -- IncrementalDetokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("skip_special", [True, False])
def test_incremental_equals_full_decode_on_real_text(tokenizer: Any, skip_special: bool) -> None:
    rng = random.Random(0)
    prompt = encode(tokenizer, "Tell me something:")
    for text in TEXTS:
        output = encode(tokenizer, text)
        deltas = detokenize_in_chunks(tokenizer, prompt, output, skip_special, rng)
        assert "".join(deltas) == tokenizer.decode(output, skip_special_tokens=skip_special)
        # Valid UTF-8 split over tokens is held back, never shown as replacement characters.
        assert not any("\ufffd" in delta for delta in deltas)


def test_special_tokens_kept_or_skipped(tokenizer: Any) -> None:
    output = encode(tokenizer, "a<|im_end|>b")
    kept = "".join(detokenize_in_chunks(tokenizer, [], output, False, random.Random(1)))
    skipped = "".join(detokenize_in_chunks(tokenizer, [], output, True, random.Random(1)))
    assert kept == "a<|im_end|>b"
    assert skipped == "ab"


def test_multibyte_character_is_held_until_complete(tokenizer: Any) -> None:
    output = encode(tokenizer, "😀")
    assert len(output) > 1, "the emoji should span several byte-level tokens"
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.add_tokens([token_id]) for token_id in output]
    assert deltas[:-1] == [""] * (len(output) - 1)
    assert deltas[-1] == "😀"


@pytest.mark.parametrize("skip_special", [True, False])
def test_incremental_equals_full_decode_on_random_ids(tokenizer: Any, skip_special: bool) -> None:
    rng = random.Random(1234 + skip_special)
    vocab = len(tokenizer)
    for _ in range(300):
        # Bias towards special tokens and single bytes, where the hard cases are.
        pool = [rng.randrange(vocab), rng.randrange(17), rng.randrange(17, 300)]
        prompt = [rng.choice(pool) for _ in range(rng.randint(0, 6))]
        output = [rng.choice([rng.randrange(vocab), rng.randrange(17), rng.randrange(17, 300)])
                  for _ in range(rng.randint(1, 40))]
        deltas = detokenize_in_chunks(tokenizer, prompt, output, skip_special, rng)
        assert "".join(deltas) == tokenizer.decode(output, skip_special_tokens=skip_special), (prompt, output)


class CountingTokenizer:
    """Wraps a tokenizer and records the longest input of any decode call."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.longest_decode = 0

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        self.longest_decode = max(self.longest_decode, len(token_ids))
        return self._tokenizer.decode(token_ids, **kwargs)


def test_decode_window_stays_small_for_long_outputs(tokenizer: Any) -> None:
    counting = CountingTokenizer(tokenizer)
    output = encode(tokenizer, " ".join(TEXTS) * 5)
    assert len(output) > 300
    detok = IncrementalDetokenizer(counting, encode(tokenizer, "prompt " * 50))
    text = "".join(detok.add_tokens([token_id]) for token_id in output) + detok.flush()
    assert text == tokenizer.decode(output, skip_special_tokens=True)
    assert counting.longest_decode <= 16


# -- Detokenizer (request level, in-process) --------------------------------------------------------


def new_request(tokenizer: Any, request_id: str, **params: Any) -> NewRequest:
    return NewRequest(request_id, encode(tokenizer, "Question: what is it?"), DetokenizeParams(**params))


def run_steps(
    detok: Detokenizer, first: NewRequest, steps: list[list[int]], last_finish: FinishReason
) -> tuple[list[RequestOutput], list[str]]:
    """One token list per step; the last step carries ``last_finish``."""
    outputs, aborts = [], []
    for i, token_ids in enumerate(steps):
        finish = int(last_finish) if i == len(steps) - 1 else -1
        msg = StepOutputs(new_requests=[first] if i == 0 else [],
                          deltas=[RequestDelta(first.request_id, token_ids, finish_reason=finish)])
        sent, aborted = detok.handle(msg)
        aborts += aborted
        outputs += [out for batch in sent for out in batch.outputs]
    return outputs, aborts


def test_text_deltas_and_length_finish(tokenizer: Any) -> None:
    detok = Detokenizer(tokenizer)
    output = encode(tokenizer, " The answer is 42 😀, naïve 中文.")
    steps = [[t] for t in output]
    outputs, aborts = run_steps(detok, new_request(tokenizer, "r1"), steps, FinishReason.LENGTH)
    assert aborts == []
    assert [out.token_ids for out in outputs] == [[t] for t in output]
    assert "".join(out.text for out in outputs) == tokenizer.decode(output)
    assert [out.finish_reason for out in outputs] == [None] * (len(output) - 1) + ["length"]
    assert detok.num_requests == 0


def test_stop_string_aborts_and_later_deltas_are_ignored(tokenizer: Any) -> None:
    detok = Detokenizer(tokenizer)
    output = encode(tokenizer, " one two three four")
    outputs, aborts = run_steps(detok, new_request(tokenizer, "r1", stop=["thr", "zzz"]),
                                [[t] for t in output], FinishReason.LENGTH)
    assert aborts == ["r1"]
    assert "".join(out.text for out in outputs) == " one two "
    assert (outputs[-1].finish_reason, outputs[-1].stop_reason) == ("stop", "thr")
    assert all(out.finish_reason is None for out in outputs[:-1])
    assert detok.num_requests == 0
    late = StepOutputs(deltas=[RequestDelta("r1", encode(tokenizer, " five"))])
    assert detok.handle(late) == ([], [])


def test_stop_string_included_and_spanning_tokens(tokenizer: Any) -> None:
    detok = Detokenizer(tokenizer)
    output = encode(tokenizer, " alpha beta gamma delta")
    stop = " beta g"  # spans at least two tokens
    request = new_request(tokenizer, "r1", stop=[stop], include_stop_str_in_output=True)
    outputs, aborts = run_steps(detok, request, [[t] for t in output], FinishReason.LENGTH)
    assert aborts == ["r1"]
    assert "".join(out.text for out in outputs) == " alpha beta g"
    assert outputs[-1].stop_reason == stop


def test_held_back_stop_prefix_is_flushed_on_finish(tokenizer: Any) -> None:
    detok = Detokenizer(tokenizer)
    output = encode(tokenizer, " it ends with END")
    outputs, aborts = run_steps(detok, new_request(tokenizer, "r1", stop=["END!"]),
                                [[t] for t in output], FinishReason.LENGTH)
    assert aborts == []
    assert "".join(out.text for out in outputs) == " it ends with END"
    assert outputs[-1].finish_reason == "length" and outputs[-1].stop_reason is None


@pytest.mark.parametrize("include", [False, True])
def test_eos_and_stop_token_finish(tokenizer: Any, include: bool) -> None:
    detok = Detokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    words = encode(tokenizer, " done")
    outputs, _ = run_steps(detok, new_request(tokenizer, "eos", skip_special_tokens=False,
                                              include_stop_str_in_output=include),
                           [words, [eos]], FinishReason.STOP)
    eos_text = tokenizer.decode([eos]) if include else ""
    assert "".join(out.text for out in outputs) == " done" + eos_text
    assert (outputs[-1].finish_reason, outputs[-1].stop_reason) == ("stop", None)

    period = encode(tokenizer, ".")[0]
    outputs, _ = run_steps(detok, new_request(tokenizer, "tok", include_stop_str_in_output=include),
                           [words + [period]], FinishReason.STOP)
    assert outputs[-1].text == " done" + ("." if include else "")
    assert (outputs[-1].finish_reason, outputs[-1].stop_reason) == ("stop", period)


@pytest.mark.parametrize("reason", [FinishReason.ABORT, FinishReason.ERROR])
def test_abort_and_error_finish(tokenizer: Any, reason: FinishReason) -> None:
    detok = Detokenizer(tokenizer)
    output = encode(tokenizer, " partial")
    outputs, aborts = run_steps(detok, new_request(tokenizer, "r1"), [output], reason)
    assert outputs[-1].finish_reason == reason.openai_name
    assert outputs[-1].text == " partial"
    assert aborts == [] and detok.num_requests == 0


def test_logprob_token_texts(tokenizer: Any) -> None:
    hello, world = encode(tokenizer, " hello")[0], encode(tokenizer, " world")[0]
    step_logprobs = [Logprobs(-0.5, top_ids=[hello, world, 2], top_logprobs=[-0.5, -1.0, -3.0])]
    for wants_text in (True, False):
        detok = Detokenizer(tokenizer)
        msg = StepOutputs(new_requests=[new_request(tokenizer, "r1", logprobs=wants_text)],
                          deltas=[RequestDelta("r1", [hello], logprobs=step_logprobs)])
        (sent,), _ = detok.handle(msg)
        (position,) = sent.outputs[0].logprobs
        assert (position.sampled.token_id, position.sampled.logprob) == (hello, -0.5)
        assert [(t.token_id, t.logprob) for t in position.top] == [(hello, -0.5), (world, -1.0), (2, -3.0)]
        texts = [position.sampled.text] + [t.text for t in position.top]
        assert texts == ([" hello", " hello", " world", "<|im_end|>"] if wants_text else [""] * 4)


def test_several_requests_in_one_step_and_pong(tokenizer: Any) -> None:
    detok = Detokenizer(tokenizer)
    a, b = encode(tokenizer, " apple"), encode(tokenizer, " banana")
    msg = StepOutputs(new_requests=[new_request(tokenizer, "a"), new_request(tokenizer, "b", stop=["nan"])],
                      deltas=[RequestDelta("a", a, num_prompt_tokens=7, num_cached_tokens=3),
                              RequestDelta("b", b)])
    (sent,), aborts = detok.handle(msg)
    assert [(o.request_id, o.text, o.num_prompt_tokens, o.num_cached_tokens) for o in sent.outputs] == [
        ("a", " apple", 7, 3), ("b", " ba", 0, 0)]
    assert aborts == ["b"] and detok.num_requests == 1
    pong = Pong(seq=9, stats=EngineStats(num_running=1))
    assert detok.handle(pong) == ([pong], [])


# -- the process ------------------------------------------------------------------------------------


def test_process_over_ipc_sockets(tokenizer: Any) -> None:
    ipc_dir = tempfile.mkdtemp(prefix="kdetok-", dir="/tmp")  # ipc paths must be short
    paths = {name: os.path.join(ipc_dir, name) for name in ("engine_out", "frontend_in", "engine_in")}
    context = zmq.Context()
    frontend_in, engine_in = context.socket(zmq.PULL), context.socket(zmq.PULL)
    engine_out = context.socket(zmq.PUSH)
    for sock in (frontend_in, engine_in, engine_out):
        sock.setsockopt(zmq.LINGER, 0)
    frontend_in.bind(f"ipc://{paths['frontend_in']}")
    engine_in.bind(f"ipc://{paths['engine_in']}")
    engine_out.connect(f"ipc://{paths['engine_out']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "detokenizer", "--engine-output", paths["engine_out"],
         "--frontend-input", paths["frontend_in"], "--engine-input", paths["engine_in"],
         "--tokenizer", default_model_path()],
        cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        requests = [new_request(tokenizer, "a"), new_request(tokenizer, "b", stop=["nan"])]
        step = StepOutputs(new_requests=requests,
                           deltas=[RequestDelta("a", encode(tokenizer, " apple")),
                                   RequestDelta("b", encode(tokenizer, " banana"))])
        engine_out.send(Codec(EngineOutput).encode(step))
        engine_out.send(Codec(EngineOutput).encode(Pong(seq=3, stats=EngineStats(num_waiting=2))))
        frontend_codec = Codec(FrontendInput)
        assert frontend_in.poll(120_000), "no output from the detokenizer process"
        outputs = frontend_codec.decode(frontend_in.recv())
        assert isinstance(outputs, RequestOutputs)
        assert [(o.request_id, o.text, o.finish_reason) for o in outputs.outputs] == [
            ("a", " apple", None), ("b", " ba", "stop")]
        assert engine_in.poll(10_000)
        assert Codec(EngineInput).decode(engine_in.recv()) == AbortRequest(request_ids=["b"])
        assert frontend_in.poll(10_000)
        assert frontend_codec.decode(frontend_in.recv()) == Pong(seq=3, stats=EngineStats(num_waiting=2))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for sock in (frontend_in, engine_in, engine_out):
            sock.close()
        context.term()
