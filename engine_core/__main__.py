"""``python -m engine_core --config-json JSON --input PATH --output PATH``: the engine core process."""

from __future__ import annotations

import argparse
import logging

import msgspec

from engine_core.config import EngineConfig


def main() -> None:
    parser = argparse.ArgumentParser(prog="kestrel-engine-core")
    parser.add_argument("--config-json", required=True, help="EngineConfig as JSON")
    parser.add_argument("--input", required=True, help="ipc path the engine binds for its input")
    parser.add_argument("--output", required=True, help="ipc path of the detokenizer's input")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine_core %(levelname)s %(message)s")
    config = msgspec.json.decode(args.config_json, type=EngineConfig)
    from engine_core.core import EngineCoreProc  # torch is imported only after parsing

    EngineCoreProc(config, args.input, args.output).run()


if __name__ == "__main__":
    main()
