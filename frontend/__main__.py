"""``python -m frontend ...``: the HTTP frontend process of the group (started by the launcher)."""

from __future__ import annotations

import argparse
import logging

import msgspec

from engine_core.config import FrontendConfig


def main() -> None:
    parser = argparse.ArgumentParser(prog="kestrel-frontend")
    parser.add_argument("--config-json", required=True, help="FrontendConfig as JSON")
    parser.add_argument("--model", required=True, help="model path (for the tokenizer and the default name)")
    parser.add_argument("--task", required=True, choices=("generate", "embedding"),
                        help="the resolved task: which endpoints serve")
    parser.add_argument("--engine-input", required=True)
    parser.add_argument("--frontend-input", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s frontend %(levelname)s %(message)s")
    config = msgspec.json.decode(args.config_json, type=FrontendConfig)
    from frontend.app import build_app

    app = build_app(config, args.model, args.task, args.engine_input, args.frontend_input)
    app.run(host=config.host, port=config.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
