"""WKV kernels: the float64 reference, the one-step recurrence and the chunked parallel form.

All use one layout: ``[B, T, H, N]`` for r, k, v and the per-token log-decay, ``[H, N]`` for the
bonus u, ``[B, H, N, N]`` (key index first, float32) for the state.
"""

from __future__ import annotations

import torch

from eaglefinch.ops.kernel_choice import use_triton
from eaglefinch.ops.wkv_chunked import wkv_chunked
from eaglefinch.ops.wkv_recurrent import wkv_recurrent, wkv_step
from eaglefinch.ops.wkv_reference import wkv_reference

__all__ = ["wkv", "wkv_chunked", "wkv_recurrent", "wkv_reference", "wkv_step"]


def wkv(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    mode: str = "auto",
    chunk_size: int = 32,  # 16 and 32 beat 64 and 128 on CPU: benchmarks/results/wkv_kernels.json
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run WKV over ``[B, T, H, N]`` inputs; see ``wkv_reference`` for the contract.

    ``mode``: "auto" (one step for T = 1, chunked otherwise), "chunked" or "recurrent".
    ``recompute``: the chunked form's memory-saving backward (see ``wkv_chunked``).
    CUDA tensors run the Triton kernels when ``triton`` imports (``eaglefinch.ops.kernel_choice``;
    ``chunk_size`` and ``recompute`` then do not apply).
    """
    if mode not in ("auto", "chunked", "recurrent"):
        raise ValueError(f"unknown WKV mode {mode!r}: use 'auto', 'chunked' or 'recurrent'")
    T = r.shape[1]
    if mode != "recurrent" and use_triton(r):
        from eaglefinch.ops.triton import wkv_triton

        return wkv_triton(r, k, v, log_w, u, state)
    if mode == "recurrent" or (mode == "auto" and T == 1):
        return wkv_recurrent(r, k, v, log_w, u, state)
    return wkv_chunked(r, k, v, log_w, u, state, chunk_size=chunk_size, recompute=recompute)
