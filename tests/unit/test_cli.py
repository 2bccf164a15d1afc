"""`kestrel serve` options: built from the config fields, YAML underneath the command line."""

from __future__ import annotations

import pytest

from engine_core.config import ModelConfig
from frontend.cli import build_parser, resolve_configs
from frontend.state import default_model_name

pytestmark = pytest.mark.unit


def test_defaults_and_positional_model() -> None:
    engine, frontend = resolve_configs(["serve", "/models/llama"])
    assert engine.model.model == "/models/llama"
    assert engine.cache.block_size == 16
    assert (frontend.host, frontend.port) == ("127.0.0.1", 8000)


def test_flags_reach_their_sections() -> None:
    engine, frontend = resolve_configs([
        "serve", "--dtype", "float32", "--max-model-len", "512", "--max_num_seqs", "4",
        "--block-size", "32", "--kv-cache-memory", "0.5", "--served-model-name", "a", "b", "--port", "9001",
        "--enable-prefix-caching",
    ])
    assert engine.cache.enable_prefix_caching
    assert engine.model.dtype == "float32" and engine.model.max_model_len == 512
    assert engine.scheduler.max_num_seqs == 4
    assert engine.cache.block_size == 32 and engine.cache.kv_cache_memory == 0.5
    assert frontend.served_model_name == ("a", "b") and frontend.port == 9001


def test_yaml_is_overridden_by_the_command_line(tmp_path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text("max-num-seqs: 7\nport: 7000\ndtype: bfloat16\n")
    engine, frontend = resolve_configs(["serve", "--config", str(config), "--port", "7100"])
    assert engine.scheduler.max_num_seqs == 7
    assert engine.model.dtype == "bfloat16"
    assert frontend.port == 7100


def test_unknown_yaml_key_is_refused(tmp_path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text("max-num-sequences: 7\n")
    with pytest.raises(SystemExit, match="max_num_sequences"):
        resolve_configs(["serve", "--config", str(config)])


def test_bad_choice_is_refused() -> None:
    with pytest.raises(SystemExit):
        resolve_configs(["serve", "--dtype", "float8"])


def test_help_comes_from_field_docs() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert ModelConfig.__dataclass_fields__["dtype"].metadata["help"].split()[0] in text
    assert "--max-num-batched-tokens" in text


def test_default_model_name_strips_quantization() -> None:
    assert default_model_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert default_model_name("/x/Meta-Llama-3-8B/") == "Meta-Llama-3-8B"
