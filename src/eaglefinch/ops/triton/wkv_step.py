"""One WKV step for a batch of rows in Triton: the decoding path.

Per (row, head): y = r @ (diag(u) k^T v + S), then S = k^T v + diag(w) S, with the float32 state
updated in place (each program reads its tile of S before writing it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _step_kernel(
    r_ptr, k_ptr, v_ptr, w_ptr, u_ptr, s_ptr, y_ptr,
    H, N, swb, swh,
    W_IS_LOG: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    bh, iv = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    ck, cv = tl.arange(0, BK), iv * BV + tl.arange(0, BV)
    mk, mv = ck < N, cv < N
    rr = tl.load(r_ptr + bh * N + ck, mask=mk, other=0.0).to(tl.float32)
    kk = tl.load(k_ptr + bh * N + ck, mask=mk, other=0.0).to(tl.float32)
    vv = tl.load(v_ptr + bh * N + cv, mask=mv, other=0.0).to(tl.float32)
    uu = tl.load(u_ptr + h * N + ck, mask=mk, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + b * swb + h * swh + ck, mask=mk, other=0.0).to(tl.float32)
    if W_IS_LOG:
        w = tl.exp(w)
    soff = bh * N * N + ck[:, None] * N + cv[None, :]
    smask = mk[:, None] & mv[None, :]
    S = tl.load(s_ptr + soff, mask=smask, other=0.0)
    kv = kk[:, None] * vv[None, :]
    y = tl.sum(rr[:, None] * (uu[:, None] * kv + S), axis=0)
    tl.store(s_ptr + soff, kv + w[:, None] * S, mask=smask)
    tl.store(y_ptr + bh * N + cv, y.to(y_ptr.dtype.element_ty), mask=mv)


def wkv_step_triton(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    *,
    w_is_log: bool = True,
) -> torch.Tensor:
    """One token for ``B`` rows; ``state`` is updated in place.

    Args:
        r, k, v: ``[B, H, N]`` (any float dtype; computed in float32).
        w: the log-decay (``w_is_log``) or the decay itself, ``[B, H, N]`` or ``[H, N]``.
        u: ``[H, N]`` bonus.
        state: ``[B, H, N, N]`` float32, contiguous, key index first.

    Returns:
        y ``[B, H, N]`` in r's dtype.
    """
    B, H, N = r.shape
    if state.dtype != torch.float32 or not state.is_contiguous() or state.shape != (B, H, N, N):
        raise ValueError(f"state must be a contiguous float32 [B, H, N, N] = {[B, H, N, N]} tensor")
    r, k, v, u = (x.contiguous() for x in (r, k, v, u))
    w = w.expand(B, H, N)
    if w.stride(-1) != 1:
        w = w.contiguous()
    y = torch.empty_like(r)
    BK = max(16, triton.next_power_of_2(N))
    BV = min(BK, 64)
    _step_kernel[(B * H, triton.cdiv(N, BV))](
        r, k, v, w, u, state, y, H, N, w.stride(0), w.stride(1), W_IS_LOG=w_is_log, BK=BK, BV=BV
    )
    return y
