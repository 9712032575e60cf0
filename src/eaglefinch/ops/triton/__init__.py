"""Triton kernels for CUDA tensors (and for CPU tensors under ``TRITON_INTERPRET=1``).

Importing this package needs ``triton`` (``pip install 'eaglefinch[gpu]'``); ``eaglefinch.ops``
imports it only when a kernel from it is used.
"""

from __future__ import annotations

import torch

from eaglefinch.ops.triton.wkv_chunked import WKVChunkedTriton, wkv_chunked_triton
from eaglefinch.ops.triton.wkv_step import wkv_step_triton

__all__ = ["WKVChunkedTriton", "wkv_chunked_triton", "wkv_step_triton", "wkv_triton"]


def wkv_triton(r, k, v, log_w, u, state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``eaglefinch.ops.wkv`` in Triton: the decode step for one token without a gradient, the
    chunked kernels otherwise."""
    B, T, H, N = r.shape
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (r, k, v, log_w, u, state)
    )
    if T == 1 and not needs_grad and log_w.shape[-2:] == (H, N) and log_w.dim() in (2, 4):
        S = (
            r.new_zeros(B, H, N, N, dtype=torch.float32) if state is None else state.float().clone()
        ).contiguous()
        lw = log_w if log_w.dim() == 2 else log_w[:, 0]
        y = wkv_step_triton(r[:, 0], k[:, 0], v[:, 0], lw, u, S)
        return y.unsqueeze(1), S
    return wkv_chunked_triton(r, k, v, log_w, u, state)
