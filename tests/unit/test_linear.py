"""kernels.linear: the same product whichever GEMM path the shape takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.linear import UPCAST_MIN_ROWS, linear

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("rows", [1, UPCAST_MIN_ROWS - 1, UPCAST_MIN_ROWS, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_float32_reference(rows: int, dtype: torch.dtype) -> None:
    torch.manual_seed(rows)
    x, w, b = torch.randn(rows, 48), torch.randn(40, 48), torch.randn(40)
    out = linear(x.to(dtype), w.to(dtype), b.to(dtype))
    assert out.dtype == dtype and out.shape == (rows, 40)
    reference = F.linear(x.to(dtype).float(), w.to(dtype).float(), b.to(dtype).float())
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    assert torch.allclose(out.float(), reference, atol=tolerance, rtol=1e-2)
