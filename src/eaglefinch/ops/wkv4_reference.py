"""The RWKV-4 WKV recurrence, one token at a time in float64: the specification of ``wkv4``.

Per channel, with the decay rate ``w >= 0`` and the bonus ``u`` (``time_first``)::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

a softmax-weighted average of the values seen so far. The loop keeps the official kernel's
running form: numerator ``a``, denominator ``b`` and their common exponent ``p`` (the state
stands for ``a * e^p`` and ``b * e^p``), so no exponential overflows.
"""

from __future__ import annotations

import torch

# The official kernel starts p at -1e38: "no history yet", finite so that p - p is 0, not NaN.
EMPTY_EXPONENT = -1e38

WKV4State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def wkv4_zero_state(batch: int, channels: int, device: torch.device | str = "cpu") -> WKV4State:
    """(a, b, p), each ``[B, C]`` float32: the state before the first token."""
    a = torch.zeros(batch, channels, dtype=torch.float32, device=device)
    return a, a.clone(), torch.full_like(a, EMPTY_EXPONENT)


def wkv4_reference(
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: WKV4State | None = None,
) -> tuple[torch.Tensor, WKV4State]:
    """Plain float64 loop over time.

    Args:
        k, v: ``[B, T, C]`` keys and values.
        w: ``[C]`` decay rate, ``>= 0`` (the official ``exp(time_decay)``).
        u: ``[C]`` bonus for the current token (``time_first``).
        state: ``(a, b, p)``, each ``[B, C]``; the empty history when ``None``.

    Returns:
        ``(wkv [B, T, C] float64, (a, b, p) float64)``.
    """
    B, T, C = k.shape
    k, v, w, u = (t.double() for t in (k, v, w, u))
    if state is None:
        state = wkv4_zero_state(B, C, k.device)
    a, b, p = (t.double() for t in state)
    out = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        # output: history plus the current token with its bonus
        q = torch.maximum(p, u + kt)
        e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
        out.append((e1 * a + e2 * vt) / (e1 * b + e2))
        # state: decay the history by one step, add the current token without the bonus
        q = torch.maximum(p - w, kt)
        e1, e2 = torch.exp(p - w - q), torch.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    y = torch.stack(out, dim=1) if out else k.new_zeros(B, 0, C)
    return y, (a, b, p)


def wkv4_softmax(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The definition written as a masked softmax over all pairs (float64, O(T^2) memory): a second oracle.

    ``k, v``: ``[B, T, C]``; ``w, u``: ``[C]``; returns ``[B, T, C]`` float64 (from the empty state).
    """
    T = k.shape[1]
    k, v, w, u = (t.double() for t in (k, v, w, u))
    t = torch.arange(T, device=k.device)
    dist = (t[:, None] - 1 - t[None, :]).double()  # (T, T): t - 1 - i
    logits = k[:, None, :, :] - dist[None, :, :, None] * w  # (B, T_out, T_in, C)
    logits = torch.where((t[:, None] == t[None, :])[None, :, :, None], (u + k)[:, None, :, :], logits)
    logits = logits.masked_fill((t[None, :] > t[:, None])[None, :, :, None], float("-inf"))
    return (torch.softmax(logits, dim=2) * v[:, None, :, :]).sum(dim=2)
