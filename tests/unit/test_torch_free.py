"""The scheduler side of the engine core must import without torch (the frontend and
tests load it in processes that should stay light)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TORCH_FREE_MODULES = ["engine_core.scheduler", "engine_core.kv_cache_manager", "engine_core.request",
                      "engine_core.config"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_scheduler_does_not_load_torch() -> None:
    imports = "; ".join(f"import {module}" for module in TORCH_FREE_MODULES)
    code = f"import sys; {imports}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_source_has_no_torch_import(module: str) -> None:
    path = REPO_ROOT / (module.replace(".", "/") + ".py")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] == "torch"}
