"""Starts the process group (engine core, detokenizer, frontend), watches it and
ends it together: one child dies, all go; SIGINT/SIGTERM, all go."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import msgspec

from engine_core.config import EngineConfig, FrontendConfig

logger = logging.getLogger("kestrel.launcher")

_POLL_S = 0.2
_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel sends SIGTERM if the launcher
    dies, even by SIGKILL, so no child is ever orphaned."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    def __init__(self, engine_config: EngineConfig, frontend_config: FrontendConfig) -> None:
        # Resolved here, once: the engine core and the frontend must agree on the task.
        model = dataclasses.replace(engine_config.model, task=engine_config.model.resolved_task())
        self.engine_config = dataclasses.replace(engine_config, model=model)
        self.frontend_config = frontend_config
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def _commands(self, socket_dir: str) -> dict[str, list[str]]:
        engine_input = os.path.join(socket_dir, "engine_input")
        engine_output = os.path.join(socket_dir, "engine_output")
        frontend_input = os.path.join(socket_dir, "frontend_input")
        model_path = self.engine_config.model.resolved_path()
        py = sys.executable
        return {
            "engine_core": [py, "-m", "engine_core", "--config-json",
                            msgspec.json.encode(self.engine_config).decode(),
                            "--input", engine_input, "--output", engine_output],
            "detokenizer": [py, "-m", "detokenizer", "--engine-output", engine_output,
                            "--frontend-input", frontend_input, "--engine-input", engine_input,
                            "--tokenizer", model_path],
            "frontend": [py, "-m", "frontend", "--config-json",
                         msgspec.json.encode(self.frontend_config).decode(),
                         "--model", model_path, "--task", self.engine_config.model.task,
                         "--engine-input", engine_input,
                         "--frontend-input", frontend_input],
        }

    def _spawn(self, name: str, cmd: list[str]) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if name != "engine_core":
            # Only the engine core may run torch compute threads on this machine.
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self.children[name] = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)

    def _request_stop(self, signum: int, _frame) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(message)s")
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        socket_dir = tempfile.mkdtemp(prefix="kestrel-")
        os.chmod(socket_dir, 0o700)
        try:
            for name, cmd in self._commands(socket_dir).items():
                self._spawn(name, cmd)
            return self._watch()
        finally:
            self._stop_all()
            shutil.rmtree(socket_dir, ignore_errors=True)

    def _watch(self) -> int:
        while not self.stopping:
            for name, child in self.children.items():
                code = child.poll()
                if code is not None:
                    logger.error("%s exited with code %s: stopping the whole server", name, code)
                    return 1
            time.sleep(_POLL_S)
        return 0

    def _stop_all(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _GRACE_S
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM: killing it", name)
                child.kill()
                child.wait()
