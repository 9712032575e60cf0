"""RWKV-4 WKV in chunks: parallel inside each chunk, a short scan across chunks.

The recurrence and the state ``(a, b, p)`` are specified in ``wkv4_reference``. Here the T tokens
are cut into chunks of L. Inside a chunk every output is a weighted sum over at most L earlier
tokens plus the carried history, all computed at once as an (L x L) table of exponents per
channel; only the history, a ``[B, C]`` triple, is passed from chunk to chunk in a Python loop
of T / L steps. Backward through it costs O(B T L C), against O(T^2) for a per-token loop.

Every exponential is taken relative to a running maximum, as the official kernel does, so large
keys or decays never overflow float32. The maxima are detached: the result does not depend on
them (they cancel between numerator and denominator), so their gradient is exactly zero.
"""

from __future__ import annotations

import torch

from eaglefinch.ops.wkv4_reference import WKV4State, wkv4_reference, wkv4_zero_state

__all__ = ["wkv4", "wkv4_reference", "wkv4_zero_state", "WKV4State"]


def _chunk_tables(k: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponents inside chunks. ``k``: ``[B, n, L, C]``.

    Returns ``(inner [B, n, L_out, L_in, C], tail [B, n, L_in, C])``: ``inner[j, i]`` weighs token i
    in output j (``k_i - (j-1-i) w`` before j, ``u + k_j`` at j, -inf after); ``tail[i] = k_i - (L-1-i) w``
    weighs token i in the history handed to the next chunk.
    """
    L = k.shape[2]
    j = torch.arange(L, device=k.device)
    dist = (j[:, None] - 1 - j[None, :]).to(k.dtype)  # (L_out, L_in): j - 1 - i
    # Everything but k_i in one small (L, L, C) table, so the big tensor is touched by a single add.
    offset = torch.where((j[:, None] == j[None, :])[:, :, None], u, -dist[:, :, None] * w)
    offset = offset.masked_fill((j[None, :] > j[:, None])[:, :, None], float("-inf"))
    inner = k.unsqueeze(2) + offset  # (B, n, L_out, L_in, C)
    tail = k - (L - 1 - j).to(k.dtype)[:, None] * w  # (B, n, L_in, C)
    return inner, tail


def _run_chunks(
    k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor, state: WKV4State
) -> tuple[torch.Tensor, WKV4State]:
    """``k, v``: ``[B, n, L, C]`` float32; returns ``(wkv [B, n, L, C], state after the last chunk)``."""
    L = k.shape[2]
    inner, tail = _chunk_tables(k, w, u)

    # What each chunk hands on, relative to its maximum q: sum_i e^{tail_i - q} v_i, and the same without v.
    q = tail.amax(dim=2).detach()  # (B, n, C)
    e_tail = torch.exp(tail - q.unsqueeze(2))
    hand_a, hand_b = (e_tail * v).sum(dim=2), e_tail.sum(dim=2)

    # Scan across chunks: the history at the start of each chunk (a chunk decays it by e^{-L w}).
    a, b, p = state
    starts = []
    for qc, ac, bc in zip(q.unbind(1), hand_a.unbind(1), hand_b.unbind(1), strict=True):
        starts.append((a, b, p))
        p_new = torch.maximum(p - L * w, qc).detach()
        e1, e2 = torch.exp(p - L * w - p_new), torch.exp(qc - p_new)
        a, b, p = e1 * a + e2 * ac, e1 * b + e2 * bc, p_new
    a0, b0, p0 = (torch.stack(s, dim=1) for s in zip(*starts, strict=True))  # each (B, n, C)

    # Outputs: the chunk's own tokens plus the history decayed by j steps.
    j = torch.arange(L, device=k.device, dtype=k.dtype)
    hist = p0.unsqueeze(2) - j[:, None] * w  # (B, n, L, C)
    m = torch.maximum(inner.amax(dim=3), hist).detach()  # (B, n, L, C)
    e_inner = torch.exp(inner - m.unsqueeze(3))  # (B, n, L_out, L_in, C)
    e_hist = torch.exp(hist - m)
    num = (e_inner * v.unsqueeze(2)).sum(dim=3) + e_hist * a0.unsqueeze(2)
    den = e_inner.sum(dim=3) + e_hist * b0.unsqueeze(2)
    return num / den, (a, b, p)


def wkv4(
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: WKV4State | None = None,
    *,
    chunk_size: int = 4,
) -> tuple[torch.Tensor, WKV4State]:
    """RWKV-4 WKV over ``[B, T, C]`` inputs (same contract as ``wkv4_reference``).

    Args:
        k, v: ``[B, T, C]`` keys and values, any float dtype (computed in float32, float64 stays float64).
        w: ``[C]`` decay rate, ``>= 0`` (the official ``exp(time_decay)``).
        u: ``[C]`` bonus for the current token (``time_first``).
        state: ``(a, b, p)``, each ``[B, C]``; the empty history when ``None``.
        chunk_size: tokens per chunk; memory grows as ``B * T * chunk_size * C``.

    Returns:
        ``(wkv [B, T, C] in k's dtype, (a, b, p) in the compute dtype)``.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"wkv4 expects k and v of one shape [B, T, C], got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, T, C = k.shape
    dtype = k.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if state is None:
        state = wkv4_zero_state(B, C, k.device)
    state = tuple(s.to(compute) for s in state)
    k, v, w, u = (t.to(compute) for t in (k, v, w, u))
    outs = []
    main = T - T % chunk_size
    if main:
        y, state = _run_chunks(
            k[:, :main].view(B, -1, chunk_size, C), v[:, :main].view(B, -1, chunk_size, C), w, u, state
        )
        outs.append(y.reshape(B, main, C))
    if T > main:  # the last, shorter chunk: a chunk of its own so that padding never enters the state
        y, state = _run_chunks(k[:, main:].unsqueeze(1), v[:, main:].unsqueeze(1), w, u, state)
        outs.append(y.squeeze(1))
    y = torch.cat(outs, dim=1) if outs else k.new_zeros(B, 0, C)
    return y.to(dtype), state
