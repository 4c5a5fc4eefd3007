"""Where bfloat16 arithmetic is fast enough to use for selection-only products."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _native_bf16_cpu() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_bf16(device: torch.device) -> bool:
    """True on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX: ~4.7x fp32 matmuls here)."""
    return device.type == "cuda" or (device.type == "cpu" and _native_bf16_cpu())
