"""python -m detokenizer --engine-output PATH --frontend-input PATH --engine-input PATH --tokenizer PATH"""

from __future__ import annotations

import argparse
import logging
import os

# Before anything imports torch: this process only decodes text.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from detokenizer.process import run_detokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m detokenizer", description="Kestrel detokenizer process")
    parser.add_argument("--engine-output", required=True, help="ipc path engine core pushes to (bound here)")
    parser.add_argument("--frontend-input", required=True, help="ipc path of the frontend's input socket")
    parser.add_argument("--engine-input", required=True, help="ipc path of the engine core's input socket")
    parser.add_argument("--tokenizer", required=True, help="tokenizer: a .gguf file or an HF directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s detokenizer %(levelname)s %(message)s")
    run_detokenizer(args.engine_output, args.frontend_input, args.engine_input, args.tokenizer)


if __name__ == "__main__":
    main()
