"""Attention backends; ``get_attention_backend`` picks the one for a device."""

from __future__ import annotations

import torch

from kernels.attention.base import AttentionBackend, AttentionMetadata, BatchLayout

__all__ = ["AttentionBackend", "AttentionMetadata", "BatchLayout", "get_attention_backend"]


def get_attention_backend(device: torch.device) -> type[AttentionBackend]:
    if device.type == "cpu":
        from kernels.attention.cpu import CpuAttentionBackend

        return CpuAttentionBackend
    if device.type == "cuda":
        raise NotImplementedError("the CUDA (FlashInfer) attention backend is not written yet; use cpu")
    raise NotImplementedError(f"no attention backend for device type {device.type!r}")
