"""The WKV recurrence one step at a time, in the working precision: the decoding path.

The state is kept in float32 whatever the dtype of r, k, v (bf16/fp16 states drift over long
generations); the output is returned in r's dtype.
"""

from __future__ import annotations

import torch


def wkv_step(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token.

    Args:
        r, k, v: ``[B, H, N]``.
        log_w: ``[B, H, N]`` or broadcastable (``[H, N]`` for Eagle), ``<= 0``.
        u: ``[H, N]``.
        state: ``[B, H, N, N]`` float32, key index first.

    Returns:
        ``(y [B, H, N] in r's dtype, new state [B, H, N, N] float32)``.
    """
    dtype = r.dtype
    r, k, v = r.float(), k.float(), v.float()
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, N, N)
    with torch.autocast(r.device.type, enabled=False):  # float32 whatever the caller's autocast
        y = (r.unsqueeze(-2) @ (u.float().unsqueeze(-1) * kv + state)).squeeze(-2)  # (B, H, N)
    state = kv + torch.exp(log_w.float()).unsqueeze(-1) * state
    return y.to(dtype), state


def wkv_recurrent(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step through ``[B, T, H, N]`` inputs token by token (same contract as ``wkv_reference``).

    Exact but slow for long T, and backpropagating through it costs O(T^2) memory traffic:
    training and prefill use the chunked form instead.
    """
    B, T, H, N = r.shape
    if state is None:
        state = torch.zeros(B, H, N, N, dtype=torch.float32, device=r.device)
    # Cast u and log_w once, not per step: the gradients of the per-step casts would otherwise be
    # summed over T in the input dtype (bf16 loses ~2 digits over a few hundred tokens).
    u = u.float()
    log_w = log_w.float()
    log_w = log_w.expand(B, T, H, N) if log_w.dim() == 4 else log_w
    ys = []
    for t in range(T):
        lw = log_w[:, t] if log_w.dim() == 4 else log_w
        y, state = wkv_step(r[:, t], k[:, t], v[:, t], lw, u, state.float())
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    return y, state
