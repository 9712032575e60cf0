"""The WKV recurrence of Eagle and Finch, one token at a time in float64: the specification.

Per head, with the state S (N x N, key index first), for each step t::

    y_t = r_t @ (diag(u) k_t^T v_t + S)
    S   = k_t^T v_t + diag(w_t) S

where w_t = exp(log_w_t) is the per-channel decay in (0, 1]. Eagle's decay is the same for
every token; Finch's depends on the token. Fast kernels are tested against this loop.
"""

from __future__ import annotations

import torch


def wkv_reference(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain float64 loop over time.

    Args:
        r, k, v: ``[B, T, H, N]`` receptance, key, value.
        log_w: log of the decay, ``<= 0``; ``[B, T, H, N]`` (Finch) or anything broadcastable to it,
            e.g. ``[H, N]`` (Eagle).
        u: ``[H, N]`` bonus for the current token (``time_faaaa``).
        state: ``[B, H, N, N]`` initial state (key index first), zeros when ``None``.

    Returns:
        ``(y, state)``: ``y`` is ``[B, T, H, N]`` in float64, ``state`` the final ``[B, H, N, N]`` in float64.
    """
    B, T, H, N = r.shape
    r, k, v, u = (t.double() for t in (r, k, v, u))
    w = torch.exp(log_w.double()).expand(B, T, H, N)
    S = torch.zeros(B, H, N, N, dtype=torch.float64, device=r.device) if state is None else state.double()
    ys = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, N, N)
        ys.append(torch.einsum("bhi,bhij->bhj", r[:, t], u[None, :, :, None] * kv + S))
        S = kv + w[:, t, :, :, None] * S
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    return y, S
