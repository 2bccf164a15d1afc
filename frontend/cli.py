"""``kestrel serve [MODEL] [options]``: options come from the config dataclasses'
field docs; a YAML file (``--config``) maps onto the same field names and the
command line wins over it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, get_type_hints

import yaml

from engine_core.config import (
    CacheConfig,
    EngineConfig,
    FrontendConfig,
    ModelConfig,
    SchedulerConfig,
    pick,
)

SECTIONS = (ModelConfig, CacheConfig, SchedulerConfig, FrontendConfig)


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    group = parser.add_argument_group(cls.__name__)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "model":  # the positional argument
            continue
        kind = hints[f.name]
        kw: dict[str, Any] = {"help": f.metadata.get("help", ""), "default": argparse.SUPPRESS}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.metadata.get("nargs"):
            kw["nargs"] = f.metadata["nargs"]
        elif kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str):
            kw["type"] = kind
        flag = "--" + f.name.replace("_", "-")
        aliases = ["--" + f.name] if "_" in f.name else []  # --a_b works like --a-b
        group.add_argument(flag, *aliases, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kestrel", description="Kestrel: an OpenAI-compatible LLM server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over the OpenAI HTTP API")
    serve.add_argument("model", nargs="?", default=argparse.SUPPRESS,
                       help=ModelConfig.__dataclass_fields__["model"].metadata["help"])
    serve.add_argument("--config", help="YAML file whose keys are the option names (dashes or underscores)")
    for cls in SECTIONS:
        _add_fields(serve, cls)
    return parser


def resolve_configs(argv: list[str]) -> tuple[EngineConfig, FrontendConfig]:
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    if args.get("config"):
        with open(args["config"]) as fh:
            loaded = yaml.safe_load(fh) or {}
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
        known = {f.name for cls in SECTIONS for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"kestrel: unknown option(s) in {args['config']}: {', '.join(unknown)}")
    values.update({k: v for k, v in args.items() if k not in ("command", "config")})
    return EngineConfig.from_flat(values), pick(FrontendConfig, values)


def main(argv: list[str] | None = None) -> None:
    engine_config, frontend_config = resolve_configs(sys.argv[1:] if argv is None else argv)
    from frontend.launcher import Launcher

    try:
        launcher = Launcher(engine_config, frontend_config)
    except ValueError as exc:  # e.g. a --task the model cannot do
        raise SystemExit(f"kestrel: {exc}") from None
    sys.exit(launcher.run())
