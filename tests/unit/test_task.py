"""Task resolution (generate vs embedding), the --task flag, and the cross-task 400."""

from __future__ import annotations

import json

import pytest

from engine_core.config import FrontendConfig, ModelConfig
from engine_core.task import resolve_task
from frontend.cli import resolve_configs
from frontend.errors import BadRequestError
from frontend.state import ServerState

pytestmark = pytest.mark.unit


def write_config(directory, architecture: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return str(directory)


def test_auto_serves_encoders_as_embedding_and_the_rest_as_generate(tmp_path) -> None:
    assert resolve_task("auto", write_config(tmp_path / "bert", "BertModel")) == "embedding"
    assert resolve_task("auto", write_config(tmp_path / "llama", "LlamaForCausalLM")) == "generate"
    assert resolve_task("auto", str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")) == "generate"


def test_auto_follows_an_older_sentence_transformers_layout(tmp_path) -> None:
    write_config(tmp_path / "0_BERT", "BertForMaskedLM")
    modules = [{"path": "0_BERT", "type": "sentence_transformers.models.Transformer"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert resolve_task("auto", str(tmp_path)) == "embedding"


def test_embed_is_an_alias_and_explicit_tasks_that_fit_are_kept(tmp_path) -> None:
    bert = write_config(tmp_path / "bert", "BertModel")
    assert resolve_task("embed", bert) == "embedding"
    assert resolve_task("embedding", bert) == "embedding"
    assert resolve_task("generate", str(tmp_path / "m.gguf")) == "generate"


@pytest.mark.parametrize(("task", "arch", "suggested"), [
    ("generate", "BertModel", "--task embedding"),
    ("embedding", "LlamaForCausalLM", "--task generate"),
    ("embed", "LlamaForCausalLM", "--task generate"),
])
def test_a_task_the_model_cannot_do_names_the_right_flag(tmp_path, task: str, arch: str,
                                                         suggested: str) -> None:
    with pytest.raises(ValueError, match=suggested):
        resolve_task(task, write_config(tmp_path / "m", arch))


def test_unknown_task_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task("classify", str(tmp_path))


def test_model_config_resolves_through_its_path(tmp_path) -> None:
    bert = write_config(tmp_path / "bert", "BertModel")
    assert ModelConfig(model=bert).resolved_task() == "embedding"
    assert ModelConfig(model=bert, task="embed").resolved_task() == "embedding"


def test_task_flag_reaches_the_model_config_and_checks_choices() -> None:
    engine, _ = resolve_configs(["serve", "/models/bert", "--task", "embed"])
    assert engine.model.task == "embed"
    assert resolve_configs(["serve", "/models/x"])[0].model.task == "auto"
    with pytest.raises(SystemExit):
        resolve_configs(["serve", "--task", "classify"])


@pytest.mark.parametrize(("task", "needed", "endpoint"), [
    ("embedding", "generate", "/v1/chat/completions"),
    ("generate", "embedding", "/v1/embeddings"),
])
def test_cross_task_requests_are_a_400_that_names_the_flag(task: str, needed: str, endpoint: str) -> None:
    state = ServerState(FrontendConfig(), client=None, tokenizer=None, served_names=("m",),  # type: ignore[arg-type]
                        max_model_len=16, task=task)
    with pytest.raises(BadRequestError, match=f"--task {needed}") as err:
        state.check_task(needed, endpoint)
    assert err.value.status == 400 and endpoint in str(err.value)
    state.check_task(task, endpoint)  # the server's own task passes
