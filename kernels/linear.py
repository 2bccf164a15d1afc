"""The dense matmul every linear layer calls.

On CPUs without native bf16 math (no AVX512-BF16 / AMX), oneDNN emulates bf16 GEMMs
and their cost grows with every row of input: measured on this AVX2 machine, 30
[3072 x 576] bf16 GEMMs take 184 ms at 32 rows against 72 ms for upcasting the
weights and running float32. Few rows stay in bf16, where reading half the bytes of
weight is what counts (7.6 ms vs 64 ms at one row).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Rows from which upcasting a bf16 weight to float32 beats the emulated bf16 GEMM here.
UPCAST_MIN_ROWS = 12


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``, in float32 for wide emulated-bf16 GEMMs on the CPU."""
    if (x.dtype == torch.bfloat16 and x.shape[0] >= UPCAST_MIN_ROWS and x.device.type == "cpu"
            and not cpu_has_native_bf16()):
        bias32 = None if bias is None else bias.float()
        return F.linear(x.float(), weight.float(), bias32).to(x.dtype)
    return F.linear(x, weight, bias)
