"""Chunked WKV of Eagle and Finch in Triton: forward, backward and the final state.

Same recurrence, layout and contract as ``eaglefinch.ops.wkv_chunked`` (per head, S the N x N
state, key index first)::

    y_t = r_t @ (diag(u) k_t^T v_t + S)
    S   = k_t^T v_t + diag(w_t) S,        w_t = exp(g_t),  g_t = log_w_t <= 0

Work is split as in flash-linear-attention's chunked kernels: a sequential pass per (batch, head)
carries the state across chunks of ``CHUNK`` tokens and writes the state entering each chunk; a
parallel pass over sub-chunks of ``SUB`` tokens computes the outputs from those states and the
pairs inside the chunk. Backward mirrors it: a reverse sequential pass for the state gradients,
then a parallel pass for dr, dk, dv and du.

Stability. Every exponent is a sum of g's over a range of tokens (<= 0), built by adding the g's
of that range, never as a difference of running sums. A pair (j, i) whose sub-chunks differ is
factored at the start of i's sub-chunk: e^{sum_{j<t<i} g} = e^{sum of g in i's sub-chunk before
i} * e^{sum of g after j up to there}, both <= 1, so the pairs of two sub-chunks are one matrix
product. Pairs inside one sub-chunk are computed one column at a time, the exponent grown by one
g per step. log_w = 0 and log_w far below -1e3 are ordinary cases (log_w is clamped at
-``LOG_W_FLOOR``, where every factor it enters is 0 already).

The decay gradient needs no exponentials: for a token t, every pair (j, i) with j < t < i (and the
initial and final states) depends on g_t, which gives

    dg_t = sum_{i>t} r_i dr'_i - sum_{j>=t} k_j dk'_j + sum_v S_T[:, v] dS_T[:, v]

with dr', dk' the gradients of r and k without the bonus term: two reverse cumulative sums. Its
rounding is therefore relative to the sums of r dr' and k dk' it adds (as in flash-linear-attention),
not to dg itself: where dg is ~0 (every decay strong, or the first token with no initial state) the
torch form is closer to exact, by ~1e-6 of those sums in float32.

Arithmetic is float32; with bf16/fp16 inputs the matrix products take their operands in the input
dtype (tensor cores) and accumulate in float32 (under Triton's CPU interpreter, whose bf16 products
are unreliable, bf16 products take float32 operands).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64  # tokens per chunk: the state is written once per chunk
SUB = 16  # tokens per sub-chunk: the smallest matrix-product tile; pairs inside one are pairwise
LOG_W_FLOOR = 1e4  # e^{-1e4} is 0 in float64 already


@triton.jit
def _dot(a, b, MIXED: tl.constexpr, DT: tl.constexpr):
    """a @ b accumulated in float32: operands in DT when MIXED, else exact float32."""
    if MIXED:
        return tl.dot(a.to(DT), b.to(DT))
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _load_rows(ptr, t, T, stride_t, cols, N, row_ok):
    """Rows t (a vector of token indices) of a [T, N] view with row stride stride_t, as float32;
    zero outside 0 <= t < T, cols >= N, or where row_ok is false."""
    mask = (row_ok & (t >= 0) & (t < T))[:, None] & (cols < N)[None, :]
    return tl.load(ptr + t[:, None] * stride_t + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_g(ptr, t, T, stride_t, cols, N, row_ok, FLOOR: tl.constexpr):
    return tl.maximum(_load_rows(ptr, t, T, stride_t, cols, N, row_ok), -FLOOR)


@triton.jit
def _load_row(ptr, cols, N, t, T):
    """One row (float32) of token index t, zero unless t < T, and where cols >= N."""
    return tl.load(ptr + cols, mask=(cols < N) & (cols * 0 + t < T), other=0.0).to(tl.float32)


@triton.jit
def _fwd_states_kernel(
    k_ptr, v_ptr, g_ptr, s0_ptr, states_ptr, sT_ptr,
    T, H, N, sgb, sgt, sgh,
    HAS_S0: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MIXED: tl.constexpr, FLOOR: tl.constexpr,
):  # fmt: skip
    """One (batch, head, value block): S across chunks; writes the state entering every chunk."""
    bh, iv = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    DT = k_ptr.dtype.element_ty
    ck, cv, rows = tl.arange(0, BK), iv * BV + tl.arange(0, BV), tl.arange(0, L)
    smask = (ck < N)[:, None] & (cv < N)[None, :]
    soff = ck[:, None] * N + cv[None, :]
    base = (b * T * H + h) * N  # token 0 of this batch row and head in [B, T, H, N]
    k_ptr += base
    v_ptr += base
    g_ptr += b * sgb + h * sgh
    nC = tl.cdiv(T, L)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        S = tl.load(s0_ptr + bh * N * N + soff, mask=smask, other=0.0)
    for c in range(nC):
        tl.store(states_ptr + (bh * nC + c) * N * N + soff, S, mask=smask)
        t = c * L + rows
        kk = _load_rows(k_ptr, t, T, H * N, ck, N, rows >= 0)
        vv = _load_rows(v_ptr, t, T, H * N, cv, N, rows >= 0)
        gg = _load_g(g_ptr, t, T, sgt, ck, N, rows >= 0, FLOOR)
        # row j holds g_{j+1} inside the chunk, so the reverse cumsum is the sum of g after j
        gn = _load_g(g_ptr, t + 1, T, sgt, ck, N, rows + 1 < L, FLOOR)
        after = tl.cumsum(gn, axis=0, reverse=True)
        kd = kk * tl.exp(after)
        S = S * tl.exp(tl.sum(gg, axis=0))[:, None] + _dot(tl.trans(kd), vv, MIXED, DT)
    tl.store(sT_ptr + bh * N * N + soff, S, mask=smask)


@triton.jit
def _fwd_output_kernel(
    r_ptr, k_ptr, v_ptr, g_ptr, u_ptr, states_ptr, y_ptr,
    T, H, N, sgb, sgt, sgh,
    L: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, MIXED: tl.constexpr, FLOOR: tl.constexpr,
):  # fmt: skip
    """One sub-chunk of one (batch, head): y from the entering state, earlier sub-chunks of the
    chunk, the pairs inside the sub-chunk and the bonus."""
    i_s, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    DT = k_ptr.dtype.element_ty
    NS: tl.constexpr = L // BC
    c, a = i_s // NS, i_s % NS
    t0 = c * L + a * BC
    ck, rows = tl.arange(0, BK), tl.arange(0, BC)
    always = rows >= 0
    base = (b * T * H + h) * N
    r_ptr += base
    k_ptr += base
    v_ptr += base
    y_ptr += base
    g_ptr += b * sgb + h * sgh
    t = t0 + rows
    ra = _load_rows(r_ptr, t, T, H * N, ck, N, always)
    ka = _load_rows(k_ptr, t, T, H * N, ck, N, always)
    va = _load_rows(v_ptr, t, T, H * N, ck, N, always)
    # row i holds g_{i-1} inside the sub-chunk: the cumsum is the sum of g in the sub-chunk before i
    before = tl.cumsum(_load_g(g_ptr, t - 1, T, sgt, ck, N, rows >= 1, FLOOR), axis=0)
    u = tl.load(u_ptr + h * N + ck, mask=ck < N, other=0.0).to(tl.float32)

    y = tl.sum(ra * u[None, :] * ka, axis=1)[:, None] * va  # the bonus, j = i
    # pairs j < i in this sub-chunk, column j at a time: ex[i] = g_{j+1} + ... + g_{i-1}
    ex = tl.zeros([BC, BK], dtype=tl.float32)
    for jj in range(BC):
        j = BC - 1 - jj
        gj1 = tl.maximum(
            _load_row(g_ptr + (t0 + j + 1) * sgt, ck, N, t0 + j + 1, tl.minimum(T, t0 + BC)), -FLOOR
        )
        ex += tl.where(rows[:, None] > j + 1, gj1[None, :], 0.0)
        kj = _load_row(k_ptr + (t0 + j) * H * N, ck, N, t0 + j, T)
        vj = _load_row(v_ptr + (t0 + j) * H * N, ck, N, t0 + j, T)
        col = tl.where(rows > j, tl.sum(ra * kj[None, :] * tl.exp(ex), axis=1), 0.0)
        y += col[:, None] * vj[None, :]
    # earlier sub-chunks of the chunk, nearest first; `between` sums g over those passed
    qa = ra * tl.exp(before)
    between = tl.zeros([BK], dtype=tl.float32)
    for bb in range(a):
        tb = t0 - (bb + 1) * BC + rows
        kb = _load_rows(k_ptr, tb, T, H * N, ck, N, always)
        vb = _load_rows(v_ptr, tb, T, H * N, ck, N, always)
        gb = _load_g(g_ptr, tb, T, sgt, ck, N, always, FLOOR)
        after = tl.cumsum(_load_g(g_ptr, tb + 1, T, sgt, ck, N, rows + 1 < BC, FLOOR), axis=0, reverse=True)
        kdb = kb * tl.exp(after + between[None, :])
        A = _dot(qa, tl.trans(kdb), MIXED, DT)
        y += _dot(A, vb, MIXED, DT)
        between += tl.sum(gb, axis=0)
    S = tl.load(
        states_ptr + (bh * tl.cdiv(T, L) + c) * N * N + ck[:, None] * N + ck[None, :],
        mask=(ck < N)[:, None] & (ck < N)[None, :],
        other=0.0,
    )
    y += _dot(ra * tl.exp(before + between[None, :]), S, MIXED, DT)
    mask = (t < T)[:, None] & (ck < N)[None, :]
    tl.store(y_ptr + t[:, None] * H * N + ck[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_states_kernel(
    r_ptr, g_ptr, dy_ptr, dsT_ptr, dstates_ptr, ds0_ptr,
    T, H, N, sgb, sgt, sgh,
    HAS_DST: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MIXED: tl.constexpr, FLOOR: tl.constexpr,
):  # fmt: skip
    """One (batch, head, value block), chunks last to first: the gradient of the state leaving
    every chunk, and of the initial state."""
    bh, iv = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    DT = r_ptr.dtype.element_ty
    ck, cv, rows = tl.arange(0, BK), iv * BV + tl.arange(0, BV), tl.arange(0, L)
    smask = (ck < N)[:, None] & (cv < N)[None, :]
    soff = ck[:, None] * N + cv[None, :]
    base = (b * T * H + h) * N
    r_ptr += base
    dy_ptr += base
    g_ptr += b * sgb + h * sgh
    nC = tl.cdiv(T, L)
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DST:
        dS = tl.load(dsT_ptr + bh * N * N + soff, mask=smask, other=0.0)
    for cc in range(nC):
        c = nC - 1 - cc
        tl.store(dstates_ptr + (bh * nC + c) * N * N + soff, dS, mask=smask)
        t = c * L + rows
        rr = _load_rows(r_ptr, t, T, H * N, ck, N, rows >= 0)
        dy = _load_rows(dy_ptr, t, T, H * N, cv, N, rows >= 0)
        gg = _load_g(g_ptr, t, T, sgt, ck, N, rows >= 0, FLOOR)
        before = tl.cumsum(_load_g(g_ptr, t - 1, T, sgt, ck, N, rows >= 1, FLOOR), axis=0)
        q = rr * tl.exp(before)
        dS = dS * tl.exp(tl.sum(gg, axis=0))[:, None] + _dot(tl.trans(q), dy, MIXED, DT)
    tl.store(ds0_ptr + bh * N * N + soff, dS, mask=smask)


@triton.jit
def _bwd_grads_kernel(
    r_ptr, k_ptr, v_ptr, g_ptr, u_ptr, states_ptr, dstates_ptr, dy_ptr,
    dr_ptr, dk_ptr, dv_ptr, dgx_ptr, kdk_ptr, du_ptr,
    T, H, N, sgb, sgt, sgh,
    L: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, MIXED: tl.constexpr, FLOOR: tl.constexpr,
):  # fmt: skip
    """One sub-chunk of one (batch, head): dr, dk, dv of its tokens, r dr' - k dk' and k dk' for
    the decay gradient, and its share of du."""
    i_s, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    DT = k_ptr.dtype.element_ty
    NS: tl.constexpr = L // BC
    c, a = i_s // NS, i_s % NS
    t0 = c * L + a * BC
    ck, rows = tl.arange(0, BK), tl.arange(0, BC)
    always = rows >= 0
    base = (b * T * H + h) * N
    r_ptr += base
    k_ptr += base
    v_ptr += base
    dy_ptr += base
    g_ptr += b * sgb + h * sgh
    t = t0 + rows
    ra = _load_rows(r_ptr, t, T, H * N, ck, N, always)
    ka = _load_rows(k_ptr, t, T, H * N, ck, N, always)
    va = _load_rows(v_ptr, t, T, H * N, ck, N, always)
    dya = _load_rows(dy_ptr, t, T, H * N, ck, N, always)
    before = tl.cumsum(_load_g(g_ptr, t - 1, T, sgt, ck, N, rows >= 1, FLOOR), axis=0)
    after = tl.cumsum(_load_g(g_ptr, t + 1, T, sgt, ck, N, rows + 1 < BC, FLOOR), axis=0, reverse=True)
    u = tl.load(u_ptr + h * N + ck, mask=ck < N, other=0.0).to(tl.float32)

    # the bonus: y_i += (r_i . (u * k_i)) v_i
    s = tl.sum(dya * va, axis=1)  # dy_i . v_i
    dv = tl.sum(ra * u[None, :] * ka, axis=1)[:, None] * dya
    tl.store(du_ptr + (bh * tl.num_programs(0) + i_s) * BK + ck, tl.sum(ra * ka * s[:, None], axis=0))
    dr = tl.zeros([BC, BK], dtype=tl.float32)
    dk = tl.zeros([BC, BK], dtype=tl.float32)
    # pairs j < i inside the sub-chunk, column j at a time (as in the forward pass)
    ex = tl.zeros([BC, BK], dtype=tl.float32)
    for jj in range(BC):
        j = BC - 1 - jj
        gj1 = tl.maximum(
            _load_row(g_ptr + (t0 + j + 1) * sgt, ck, N, t0 + j + 1, tl.minimum(T, t0 + BC)), -FLOOR
        )
        ex += tl.where(rows[:, None] > j + 1, gj1[None, :], 0.0)
        kj = _load_row(k_ptr + (t0 + j) * H * N, ck, N, t0 + j, T)
        vj = _load_row(v_ptr + (t0 + j) * H * N, ck, N, t0 + j, T)
        e = tl.where(rows[:, None] > j, tl.exp(ex), 0.0)
        col = tl.sum(ra * kj[None, :] * e, axis=1)  # A[:, j]
        dcol = tl.sum(dya * vj[None, :], axis=1)  # dA[:, j]
        dr += dcol[:, None] * kj[None, :] * e
        at_j = rows[:, None] == j
        dk += tl.where(at_j, tl.sum(dcol[:, None] * ra * e, axis=0)[None, :], 0.0)
        dv += tl.where(at_j, tl.sum(col[:, None] * dya, axis=0)[None, :], 0.0)
    # earlier sub-chunks of the chunk (j there, i here) give dr; `between` as in the forward pass
    between = tl.zeros([BK], dtype=tl.float32)
    dq = tl.zeros([BC, BK], dtype=tl.float32)
    for bb in range(a):
        tb = t0 - (bb + 1) * BC + rows
        kb = _load_rows(k_ptr, tb, T, H * N, ck, N, always)
        vb = _load_rows(v_ptr, tb, T, H * N, ck, N, always)
        gb = _load_g(g_ptr, tb, T, sgt, ck, N, always, FLOOR)
        after_b = tl.cumsum(_load_g(g_ptr, tb + 1, T, sgt, ck, N, rows + 1 < BC, FLOOR), axis=0, reverse=True)
        kdb = kb * tl.exp(after_b + between[None, :])
        dq += _dot(_dot(dya, tl.trans(vb), MIXED, DT), kdb, MIXED, DT)
        between += tl.sum(gb, axis=0)
    dr += dq * tl.exp(before)
    nC = tl.cdiv(T, L)
    smask = (ck < N)[:, None] & (ck < N)[None, :]
    soff = ck[:, None] * N + ck[None, :]
    S = tl.load(states_ptr + (bh * nC + c) * N * N + soff, mask=smask, other=0.0)
    dr += _dot(dya, tl.trans(S), MIXED, DT) * tl.exp(before + between[None, :])
    # later sub-chunks of the chunk (i there, j here) give dk and dv; `between` now sums g over
    # the sub-chunks between this one and the one read
    between = tl.zeros([BK], dtype=tl.float32)
    for bi in range(a + 1, NS):
        tb = c * L + bi * BC + rows
        rb = _load_rows(r_ptr, tb, T, H * N, ck, N, always)
        dyb = _load_rows(dy_ptr, tb, T, H * N, ck, N, always)
        gb = _load_g(g_ptr, tb, T, sgt, ck, N, always, FLOOR)
        before_b = tl.cumsum(_load_g(g_ptr, tb - 1, T, sgt, ck, N, rows >= 1, FLOOR), axis=0)
        qb = rb * tl.exp(before_b)
        fac = tl.exp(after + between[None, :])
        A_t = _dot(ka * fac, tl.trans(qb), MIXED, DT)  # A[i, j] transposed: [j here, i there]
        dA_t = _dot(va, tl.trans(dyb), MIXED, DT)
        dk += _dot(dA_t, qb, MIXED, DT) * fac
        dv += _dot(A_t, dyb, MIXED, DT)
        between += tl.sum(gb, axis=0)
    # the state leaving the chunk takes (k_j e^{sum of g after j in the chunk})^T v_j
    fac = tl.exp(after + between[None, :])
    dS = tl.load(dstates_ptr + (bh * nC + c) * N * N + soff, mask=smask, other=0.0)
    dk += _dot(va, tl.trans(dS), MIXED, DT) * fac
    dv += _dot(ka * fac, dS, MIXED, DT)

    mask = (t < T)[:, None] & (ck < N)[None, :]
    off = base + t[:, None] * H * N + ck[None, :]
    tl.store(dgx_ptr + off, ra * dr - ka * dk, mask=mask)
    tl.store(kdk_ptr + off, ka * dk, mask=mask)
    tl.store(dr_ptr + off, dr + u[None, :] * ka * s[:, None], mask=mask)
    tl.store(dk_ptr + off, dk + u[None, :] * ra * s[:, None], mask=mask)
    tl.store(dv_ptr + off, dv, mask=mask)


def _block(N: int) -> int:
    return max(16, triton.next_power_of_2(N))


def _launch_config(r: torch.Tensor) -> dict:
    # Triton's CPU interpreter computes bf16 matrix products wrongly (numpy has no bf16): there,
    # bf16 inputs take float32 products. fp16 products are right in the interpreter too.
    mixed = r.dtype != torch.float32 and not (r.device.type == "cpu" and r.dtype == torch.bfloat16)
    return dict(MIXED=mixed, FLOOR=LOG_W_FLOOR, BK=_block(r.shape[-1]))


def _forward(r, k, v, g, u, s0):
    """r, k, v [B, T, H, N] contiguous; g a [B, T, H, N] view (strides may be 0); s0 [B, H, N, N]
    float32 or None. Returns (y, final state, state entering each chunk)."""
    B, T, H, N = r.shape
    nC = triton.cdiv(T, CHUNK)
    cfg = _launch_config(r)
    BV = min(cfg["BK"], 64)
    states = r.new_empty(B, H, nC, N, N, dtype=torch.float32)
    sT = r.new_empty(B, H, N, N, dtype=torch.float32)
    y = torch.empty_like(r)
    gs = (g.stride(0), g.stride(1), g.stride(2))
    s0_arg = s0 if s0 is not None else sT
    _fwd_states_kernel[(B * H, triton.cdiv(N, BV))](
        k, v, g, s0_arg, states, sT, T, H, N, *gs, HAS_S0=s0 is not None, L=CHUNK, BV=BV, **cfg
    )
    _fwd_output_kernel[(triton.cdiv(T, SUB), B * H)](
        r, k, v, g, u, states, y, T, H, N, *gs, L=CHUNK, BC=SUB, **cfg
    )
    return y, sT, states


def _backward(r, k, v, g, u, states, sT, dy, dsT):
    B, T, H, N = r.shape
    cfg = _launch_config(r)
    BV = min(cfg["BK"], 64)
    gs = (g.stride(0), g.stride(1), g.stride(2))
    dstates = torch.empty_like(states)
    ds0 = torch.empty_like(sT)
    _bwd_states_kernel[(B * H, triton.cdiv(N, BV))](
        r, g, dy, dsT if dsT is not None else sT, dstates, ds0, T, H, N, *gs,
        HAS_DST=dsT is not None, L=CHUNK, BV=BV, **cfg,
    )  # fmt: skip
    f32 = dict(dtype=torch.float32)
    dr, dk, dv, dgx, kdk = (r.new_empty(B, T, H, N, **f32) for _ in range(5))
    n_sub = triton.cdiv(T, SUB)
    du = r.new_empty(B * H, n_sub, cfg["BK"], **f32)
    _bwd_grads_kernel[(n_sub, B * H)](
        r, k, v, g, u, states, dstates, dy, dr, dk, dv, dgx, kdk, du, T, H, N, *gs,
        L=CHUNK, BC=SUB, **cfg,
    )  # fmt: skip
    # dg_t = sum_{i>t} (r dr' - k dk')_i - (k dk')_t + sum_v S_T dS_T (module docstring)
    dg = torch.flip(torch.cumsum(torch.flip(dgx[:, 1:], [1]), 1), [1])
    dg = torch.cat([dg, dg.new_zeros(B, 1, H, N)], 1) - kdk
    if dsT is not None:
        dg += (sT * dsT).sum(-1).unsqueeze(1)
    du = du.view(B, H, n_sub, -1)[..., :N].sum((0, 2))
    return dr, dk, dv, dg, du, ds0


class WKVChunkedTriton(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the per-chunk states, recomputes nothing."""

    @staticmethod
    def forward(ctx, r, k, v, log_w, u, s0):
        B, T, H, N = r.shape
        g = log_w.expand(B, T, H, N)
        y, sT, states = _forward(r, k, v, g, u, s0)
        ctx.save_for_backward(r, k, v, log_w, u, states, sT)
        ctx.has_s0 = s0 is not None
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, k, v, log_w, u, states, sT = ctx.saved_tensors
        B, T, H, N = r.shape
        g = log_w.expand(B, T, H, N)
        dr, dk, dv, dg, du, ds0 = _backward(
            r, k, v, g, u, states, sT, dy.contiguous(), None if dsT is None else dsT.contiguous()
        )
        # log_w below the floor was clamped: it enters nothing, as in the torch path
        dg = dg.masked_fill(g < -LOG_W_FLOOR, 0.0)
        dlog_w = dg.sum_to_size(log_w.shape).to(log_w.dtype) if ctx.needs_input_grad[3] else None
        return (
            dr.to(r.dtype),
            dk.to(k.dtype),
            dv.to(v.dtype),
            dlog_w,
            du.to(u.dtype),
            ds0 if ctx.has_s0 else None,
        )


def wkv_chunked_triton(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract of ``eaglefinch.ops.wkv_chunked``, in Triton: r, k, v ``[B, T, H, N]``; log_w
    ``[B, T, H, N]`` (Finch) or broadcastable to it (``[H, N]``, Eagle); u ``[H, N]``; state
    ``[B, H, N, N]`` or ``None``. Returns y ``[B, T, H, N]`` in r's dtype and the final state in
    float32. Differentiable in every input."""
    if r.dim() != 4 or k.shape != r.shape or v.shape != r.shape:
        raise ValueError(
            f"r, k, v must share a [B, T, H, N] shape: {tuple(r.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.dtype != r.dtype or v.dtype != r.dtype:
        raise ValueError(f"r, k, v must share a dtype: {r.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, N = r.shape
    if u.shape != (H, N):
        raise ValueError(f"u must be [H, N] = {[H, N]}, got {tuple(u.shape)}")
    if state is not None and state.shape != (B, H, N, N):
        raise ValueError(f"state must be [B, H, N, N] = {[B, H, N, N]}, got {tuple(state.shape)}")
    try:
        torch.broadcast_shapes(log_w.shape, (B, T, H, N))
    except RuntimeError:
        raise ValueError(
            f"log_w must broadcast to [B, T, H, N] = {[B, T, H, N]}, got {tuple(log_w.shape)}"
        ) from None
    s0 = None if state is None else state.float().contiguous()
    if T == 0:
        return r.new_zeros(B, 0, H, N), (
            s0.clone() if s0 is not None else r.new_zeros(B, H, N, N, dtype=torch.float32)
        )
    lw = log_w.reshape((1,) * (4 - log_w.dim()) + tuple(log_w.shape))
    if lw.stride(-1) != 1:
        lw = lw.contiguous()
    r, k, v, u = (x.contiguous() for x in (r, k, v, u))
    with torch.autocast(r.device.type, enabled=False):
        return WKVChunkedTriton.apply(r, k, v, lw, u, s0)
