"""Chunked parallel WKV: matrix products inside a chunk, the state carried between chunks.

The training and prefill path for T > 1, for Eagle's constant and Finch's per-token decay. Same
recurrence and layout as ``wkv_reference``; per head, with S the N x N state (key index first)::

    y_t = r_t @ (diag(u) k_t^T v_t + S)
    S   = k_t^T v_t + diag(w_t) S,        w_t = exp(g_t),  g_t = log_w_t <= 0

Per channel, within a chunk, let G_i = g_0 + ... + g_i and E_i = G_i - g_i (decay accumulated
before token i). Then, with S the state entering the chunk and the last token index ``l``::

    y_i = (r_i * e^{E_i}) S + sum_{j<i} A_ij v_j + (r_i . (u * k_i)) v_i,
          A_ij = sum_c r_ic k_jc e^{E_ic - G_jc}
    S'  = diag(e^{G_l}) S + sum_j (k_j * e^{G_l - G_j})^T v_j

Stability. Every exponent above is a sum of g's over a range of tokens, so it is <= 0. Splitting
e^{E_i - G_j} as e^{E_i} * e^{-G_j} over a whole chunk would exponentiate -G_j > 0, which overflows
float32 once the decay accumulated over the chunk passes ~88 (one token with log_w = -100 is
enough). Instead the chunk is halved recursively, and the pairs (i, j) whose tokens first fall
apart at a given halving (j in the first half F of a block, i in its second half S) are factored
at the boundary between the halves:

    e^{E_i - G_j} = e^{sum of g over S before i}  *  e^{sum of g over F after j}
                    (row factor q_i / r_i, <= 1)       (column factor kd_j / k_j, <= 1)

so those pairs are one matrix product q kd^T (fla's sub-chunks factored against a reference
point between them, applied at every scale). Going up a level, the second half's q is multiplied
by e^{sum of g over the first half} and the first half's kd by e^{sum over the second half}: each
factor is <= 1, and at the top q_i = r_i e^{E_i} and kd_j = k_j e^{G_l - G_j} are the factors of the
state terms. Blocks of at most PAIRWISE_BLOCK tokens, if any, are computed pair by pair with the
exact exponent sum_{j<t<i} g_t. A factor that underflows to 0 only drops a term smaller still.

Every exponent is built by adding up the g's of its own range (or multiplying factors e^{sum}),
never as a difference of two running sums: that difference cancels catastrophically when a strong
decay precedes a weak one (G = -1e3 then -1e3 - 1e-4 keeps nothing of the 1e-4 in float32), while
a sum of terms of one sign has a small relative error. log_w = 0 (no decay) and log_w far below
-1e3 are therefore ordinary cases.

Cost per token and head: one chunk x chunk masked product per halving level, O(chunk * N * log
chunk) multiply-adds, O(N log chunk) elementwise work, O(N^2) for the state. The only Python loops
run over chunks (the state scan) and over halving levels.

Backward. Plain autograd through these products keeps every intra-chunk tensor (A, the q and kd of
each halving level, their masks and exponentials): several times the inputs (a forward+backward
peak of 1.67 GiB at T = 16384 with 12 heads of 64, whose inputs are 0.19 GiB; benchmarks/results/
kernels). By default the forward pass instead runs without a graph, segment by segment, and keeps
only its inputs and the state entering each segment (N^2 per head per ``RECOMPUTE_SEGMENT``
tokens); backward walks the segments last to first, rebuilds one segment's graph from its saved
state, and backpropagates through it alone with the gradient of the state leaving it. The result
is the same arithmetic as plain autograd (so the same gradients), for one more forward pass and a
working set of one segment instead of the whole sequence. Sequences of up to ``RECOMPUTE_ABOVE``
tokens keep plain autograd, whose intermediates are small there. Inference (no gradient) runs
segment by segment (``INFERENCE_SEGMENT`` tokens) into one preallocated output, and grows the row
and column factors in place: at prefill sizes the kernel is a few hundred small operators, whose
count, not their arithmetic, sets its time.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Blocks of at most this many tokens are computed pairwise; longer ones are halved and factored.
# With 1 the halving goes down to single tokens, which measured fastest on CPU (2-15% over 2-8);
# chunk sizes that are not powers of two still end in pairwise blocks (48 -> 3, 7 -> 7).
PAIRWISE_BLOCK = 1
# Tokens per segment rebuilt in backward (rounded up to whole chunks). Smaller segments keep less
# live at once but more saved states (N^2 floats per head each) and more Python per token; 128 is
# the size benchmarks/results/kernels measured.
RECOMPUTE_SEGMENT = 128
# Sequences of at most this many whole-chunk tokens backpropagate by plain autograd: their
# intermediates are small (55 MiB with the inputs at 512 tokens of 12 heads of 64), and recomputing
# costs 0.8-1.8x plain autograd's forward+backward CPU time (both in benchmarks/results/kernels).
RECOMPUTE_ABOVE = 512
# Inference (no gradient) runs pieces of at most this many tokens (rounded up to whole chunks): its
# intermediates are a few (B, H, T, N) tensors, and each piece costs a fixed ~100 small operators.
INFERENCE_SEGMENT = 512
# log_w below -LOG_W_FLOOR is clamped there: e^{-1e4} is 0 in float64 already.
LOG_W_FLOOR = 1e4


def wkv_chunked(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    chunk_size: int = 32,  # 16 and 32 beat 64 and 128 on CPU: benchmarks/results/wkv_kernels.json
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run WKV over a sequence in chunks of ``chunk_size`` tokens.

    Args:
        r, k, v: ``[B, T, H, N]`` receptance, key, value.
        log_w: log of the decay, ``<= 0``: ``[B, T, H, N]`` per token (Finch), or broadcastable to
            ``[B, 1, H, N]``, e.g. ``[H, N]``, for a decay constant in time (Eagle), which takes a
            faster path (the decay factors are computed once and broadcast).
        u: ``[H, N]`` bonus for the current token (``time_faaaa``).
        state: ``[B, H, N, N]`` initial state (key index first), zeros when ``None``.
        chunk_size: tokens per chunk; the state is materialised once per chunk. T need not be a
            multiple of it; T = 0 returns the state unchanged.
        recompute: when a gradient is needed and T exceeds ``RECOMPUTE_ABOVE``, keep only the
            inputs and one state per segment of ``RECOMPUTE_SEGMENT`` tokens, and rebuild each
            segment in backward (the module docstring); ``False`` keeps every intermediate for
            plain autograd. Same gradients.

    Returns:
        ``(y, state)``: ``y`` is ``[B, T, H, N]`` in r's dtype; ``state`` the final ``[B, H, N, N]``
        in float32 (float64 when r is float64). bf16/fp16 inputs are computed in float32.
    """
    if r.dim() != 4:
        raise ValueError(f"r must be [B, T, H, N], got shape {tuple(r.shape)}")
    if k.shape != r.shape or v.shape != r.shape:
        raise ValueError(f"r, k, v must share a shape: {tuple(r.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    B, T, H, N = r.shape
    if u.shape != (H, N):
        raise ValueError(f"u must be [H, N] = {[H, N]}, got {tuple(u.shape)}")
    dtype = r.dtype
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32
    if state is None:
        S = torch.zeros(B, H, N, N, dtype=cdtype, device=r.device)
    else:
        if state.shape != (B, H, N, N):
            raise ValueError(f"state must be [B, H, N, N] = {[B, H, N, N]}, got {tuple(state.shape)}")
        S = state.to(cdtype)
    if T == 0:
        return r.new_zeros(B, 0, H, N), S.clone()
    # Under autocast the products below would run in bf16/fp16; this kernel's arithmetic is float32
    # (float64) whatever the caller's autocast, as the official CUDA kernels' is.
    with torch.autocast(r.device.type, enabled=False):
        return _wkv_chunked(r, k, v, log_w, u, S, chunk_size, recompute)


def _wkv_chunked(r, k, v, log_w, u, S, chunk_size: int, recompute: bool):
    """``wkv_chunked`` past its checks, with ``S`` the initial state in the compute dtype."""
    B, T, H, N = r.shape
    dtype = r.dtype
    cdtype = S.dtype

    # (B, T, H, N) -> (B, H, T, N): heads become a batch dimension of the matrix products
    r, k, v = (x.to(cdtype).transpose(1, 2) for x in (r, k, v))
    u = u.to(cdtype)
    lw = log_w.to(cdtype)
    lw = lw.reshape((1,) * (4 - lw.dim()) + tuple(lw.shape))
    if lw.dim() != 4 or lw.shape[0] not in (1, B) or lw.shape[1] not in (1, T):
        raise ValueError(f"log_w must broadcast to [B, T, H, N] = {[B, T, H, N]}, got {tuple(log_w.shape)}")
    per_token = lw.shape[1] != 1
    # (B or 1, H, T or 1, N); a size-1 batch or time dimension stays 1 and broadcasts
    g = lw.expand(lw.shape[0], lw.shape[1], H, N).transpose(1, 2)

    L = chunk_size
    T_main = T // L * L
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, g, u, S))
    # without a graph every piece writes into one output, laid out as the caller's [B, T, H, N]
    out = None if grad else r.new_empty(B, T, H, N).transpose(1, 2)
    ys = []
    if T_main:
        g_main = g[:, :, :T_main] if per_token else g
        main = (r[:, :, :T_main], k[:, :, :T_main], v[:, :, :T_main], g_main, u, S)
        segment = -(-RECOMPUTE_SEGMENT // L) * L
        if grad and recompute and T_main > max(segment, RECOMPUTE_ABOVE):
            y, S = _SegmentRecompute.apply(*main, L, segment)
            ys.append(y)
        elif grad:
            y, S = _wkv_chunks(*main, L)
            ys.append(y)
        else:  # inference: segment by segment too, so that one segment's intermediates are live at once
            _, S, _ = _by_segments(*main, L, -(-INFERENCE_SEGMENT // L) * L, out=out[:, :, :T_main])
    if T_main < T:
        # The tail is one shorter chunk, padded with k = v = 0 and log_w = 0: such tokens add
        # nothing and decay nothing, so the state comes out right. A constant decay is spelled out
        # per token here (at most one chunk of it) so that the padding can carry log_w = 0.
        t = T - T_main
        Lt = L
        while Lt % 2 == 0 and Lt // 2 >= t:
            Lt //= 2
        g_tail = g[:, :, T_main:] if per_token else g.expand(g.shape[0], H, t, N)
        tail = (r[:, :, T_main:], k[:, :, T_main:], v[:, :, T_main:], g_tail)
        rt, kt, vt, gt = (F.pad(x, (0, 0, 0, Lt - t)) for x in tail)
        y, S = _wkv_chunks(rt, kt, vt, gt, u, S, Lt)
        if out is None:
            ys.append(y[:, :, :t])
        else:
            out[:, :, T_main:] = y[:, :, :t]
    if out is not None:  # (B, H, T, N) view -> its [B, T, H, N] tensor, contiguous
        return out.transpose(1, 2).to(dtype), S
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)
    # (B, H, T, N) -> [B, T, H, N]: no copy when y is already laid out so and keeps r's dtype
    return y.transpose(1, 2).to(dtype).contiguous(), S


def _by_segments(r, k, v, g, u, S, L: int, segment: int, out: torch.Tensor | None = None):
    """``_wkv_chunks`` over ``segment``-token pieces with the state carried. Returns ``(y, final
    state, [state entering each piece])``; y is (B, H, T, N), a view of a [B, T, H, N] tensor
    (``out``, when given)."""
    B, H, T, N = r.shape
    per_token = g.shape[2] != 1
    y = r.new_empty(B, T, H, N).transpose(1, 2) if out is None else out  # the caller's layout
    entering = []
    for a in range(0, T, segment):
        b = min(a + segment, T)
        entering.append(S)
        part = (x[:, :, a:b] for x in (r, k, v))
        y[:, :, a:b], S = _wkv_chunks(*part, g[:, :, a:b] if per_token else g, u, S, L)
    return y, S, entering


class _SegmentRecompute(torch.autograd.Function):
    """``_wkv_chunks`` over segments of ``segment`` tokens whose backward rebuilds one segment at a
    time from the state that entered it (see "Backward" in the module docstring)."""

    @staticmethod
    def forward(ctx, r, k, v, g, u, S, L: int, segment: int):
        y, S_out, entering = _by_segments(r, k, v, g, u, S, L, segment)  # grad mode is off in here
        ctx.save_for_backward(r, k, v, g, u, torch.stack(entering))
        ctx.L, ctx.segment = L, segment
        return y, S_out

    @staticmethod
    def backward(ctx, dy, dS):
        r, k, v, g, u, entering = ctx.saved_tensors
        L, segment = ctx.L, ctx.segment
        B, H, T, N = r.shape
        per_token = g.shape[2] != 1
        need = ctx.needs_input_grad[:6]

        def like(x):  # gradient buffer laid out as the caller's [B, T, H, N] tensor, seen (B, H, T, N)
            return x.new_empty(x.shape[0], x.shape[2], x.shape[1], x.shape[3]).transpose(1, 2)

        dr, dk, dv = (like(x) if n else None for x, n in zip((r, k, v), need[:3], strict=True))
        dg = (like(g) if per_token else torch.zeros_like(g)) if need[3] else None
        du = torch.zeros_like(u) if need[4] else None
        for i, a in reversed(list(enumerate(range(0, T, segment)))):
            b = min(a + segment, T)
            with torch.enable_grad(), torch.autocast(r.device.type, enabled=False):
                leaves = (
                    r[:, :, a:b].detach().requires_grad_(need[0]),
                    k[:, :, a:b].detach().requires_grad_(need[1]),
                    v[:, :, a:b].detach().requires_grad_(need[2]),
                    (g[:, :, a:b] if per_token else g).detach().requires_grad_(need[3]),
                    u.detach().requires_grad_(need[4]),
                    # the state entering every segment but the first carries the gradient back
                    entering[i].detach().requires_grad_(i > 0 or need[5]),
                )
                y, S = _wkv_chunks(*leaves, L)
                wanted = [x for x in leaves if x.requires_grad]
                # the state leaving a segment need not depend on a wanted input (only r wanted, say)
                pairs = [(o, d) for o, d in ((y, dy[:, :, a:b]), (S, dS)) if o.requires_grad]
                outs, douts = zip(*pairs, strict=True)
                grads = iter(torch.autograd.grad(outs, wanted, douts, allow_unused=True))
            # allow_unused gives None for an input that nothing in this segment depends on
            got = [_or_zeros(next(grads), x) if x.requires_grad else None for x in leaves]
            for buf, grad in zip((dr, dk, dv), got[:3], strict=True):
                if buf is not None:
                    buf[:, :, a:b] = grad
            if dg is not None:
                if per_token:
                    dg[:, :, a:b] = got[3]
                else:
                    dg += got[3]
            if du is not None:
                du += got[4]
            dS = got[5]
        return dr, dk, dv, dg, du, dS if need[5] else None, None, None


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _wkv_chunks(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    u: torch.Tensor,
    S: torch.Tensor,
    L: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole chunks: r, k, v ``(B, H, T, N)`` with T a multiple of L; g ``(B|1, H, T, N)`` per
    token or ``(B|1, H, 1, N)`` constant; u ``(H, N)``; S ``(B, H, N, N)``.

    Returns ``(y (B, H, T, N), final state (B, H, N, N))``.
    """
    B, H, T, N = r.shape
    nC = T // L
    # (B, H, chunk, token, N), contiguous: made once here, or every product below copies its operands
    r, k, v = (x.reshape(B, H, nC, L, N).contiguous() for x in (r, k, v))
    gB = g.shape[0]
    if g.shape[2] == 1:
        # constant decay: the same factors for every chunk (the size-1 chunk dim broadcasts)
        g = g.reshape(gB, H, 1, 1, N).expand(gB, H, 1, L, N)
    else:
        g = g.reshape(gB, H, nC, L, N).contiguous()
    # A log-decay below -LOG_W_FLOOR already makes every exponent it enters underflow to exactly 0,
    # in float64 too: clamping it changes no result, and keeps -inf out of the sums (0 * -inf).
    g = g.clamp(min=-LOG_W_FLOOR)

    base = L
    while base % 2 == 0 and base > PAIRWISE_BLOCK:
        base //= 2
    # Blocks of `base` tokens, pairwise, into A (B, H, nC, L, L). Then q_i = r_i e^{sum of g over i's
    # block before i}, kd_j = k_j e^{sum of g over j's block after j}; `total` sums g over each block.
    A, q, kd, total = _base_blocks(r, k, g, u, base)
    # Without a graph the factors grow in place (on copies where they are still r and k); with
    # one, by out-of-place products whose backward autograd can follow. The same values either way.
    in_place = not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, kd, total)))
    if in_place and L > base:
        q = q.clone() if q is r else q
        kd = kd.clone() if kd is k else kd
    h = base
    while h < L:
        # Blocks of m = 2h tokens, halves F and S. For j in F and i in S,
        # e^{sum_{j<t<i} g_t} = e^{sum over S before i} * e^{sum over F after j}: that is q_i kd_j^T.
        # The product spans the whole chunk and a mask keeps those (i, j): a few more
        # multiply-adds than block by block, but one large batched product instead of many
        # tiny ones, and no slicing of q and kd (whose backward writes zero-filled gradients).
        m, nb = 2 * h, L // (2 * h)
        A.addcmul_(q @ kd.transpose(-1, -2), _level_mask(L, h, r))  # A += (q kd^T) * mask; A is ours
        # Grow q and kd to blocks of 2h: the second half's q takes the decay over the first half,
        # the first half's kd the decay over the second half. Multiplying by e^{sum} (<= 1) keeps
        # every exponent a sum of g's of one sign.
        first, second = total.unflatten(-3, (nb, 2)).unbind(-3)  # (.., nb, 1, N) each
        if in_place:
            q.unflatten(-2, (nb, 2, h)).select(-3, 1).mul_(torch.exp(first))
            kd.unflatten(-2, (nb, 2, h)).select(-3, 0).mul_(torch.exp(second))
        else:
            one = torch.ones_like(first)
            q = (q.unflatten(-2, (nb, 2, h)) * torch.stack([one, torch.exp(first)], -3)).reshape(r.shape)
            kd = (kd.unflatten(-2, (nb, 2, h)) * torch.stack([torch.exp(second), one], -3)).reshape(k.shape)
        total = first + second
        h = m
    # Now the block is the chunk: q_i = r_i e^{E_i}, kd_j = k_j e^{G_l - G_j}, total = G_l.
    y = A @ v  # (B, H, nC, L, N): everything from inside the chunk
    del A

    # Across chunks: each chunk's own contribution to the state, then a scan over chunks.
    kv = kd.transpose(-1, -2) @ v  # (B, H, nC, N, N): sum_j (k_j e^{G_l - G_j})^T v_j
    chunk_decay = torch.exp(total[..., 0, 0, :])  # (gB, H, nC or 1, N): e^{G_l}, over a whole chunk
    states = []
    # unbind, not indexing: the backward of unbind is one stack, of indexing one full-size
    # zero tensor per chunk
    decays = chunk_decay.expand(gB, H, nC, N).unbind(2)
    for kv_c, dec_c in zip(kv.unbind(2), decays, strict=True):
        states.append(S)
        S = dec_c.unsqueeze(-1) * S + kv_c
    S_in = torch.stack(states, dim=2)  # (B, H, nC, N, N): the state entering each chunk
    y = torch.baddbmm(y.reshape(-1, L, N), q.reshape(-1, L, N), S_in.reshape(-1, N, N))  # y += q S_in
    return y.reshape(B, H, T, N), S


def _base_blocks(
    r: torch.Tensor, k: torch.Tensor, g: torch.Tensor, u: torch.Tensor, base: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A_ij for i, j in the same block of ``base`` tokens, pairwise: sum_c r_ic k_jc e^{sum_{j<t<i} g_tc}
    for j < i, the bonus r_i . (u * k_i) for j = i.

    r, k ``(B, H, nC, L, N)``, g ``(B|1, H, nC|1, L, N)``. Returns ``(A, q, kd, total)``: A
    ``(B, H, nC, L, L)``, zero outside those blocks; q and kd ``(B, H, nC, L, N)`` with q_i = r_i e^{sum
    of g over i's block before i} and kd_j = k_j e^{sum of g over j's block after j}; total
    ``(.., L / base, 1, N)``, the sum of g over each block.
    """
    H, L, N = r.shape[1], r.shape[-2], r.shape[-1]
    nb = L // base
    bonus = (r * u.view(1, H, 1, 1, N) * k).sum(-1)  # (B, H, nC, L): r_i . (u * k_i)
    A = torch.diag_embed(bonus)
    rb, kb, gb = (x.unflatten(-2, (nb, base)) for x in (r, k, g))  # (.., nb, base, N)
    if base == 1:
        return A, r, k, gb
    total = gb.sum(-2, keepdim=True)
    # the exponent is an empty sum (0, not positive) for j >= i: finite, then masked out
    decay = _pair_sums(gb)  # (.., nb, i, j, N)
    if not torch.is_grad_enabled() and decay.shape == (*rb.shape[:-1], base, N):
        # inference, per-token decay: in place, one buffer of this (largest) size instead of three
        X = decay.exp_().mul_(rb.unsqueeze(-2)).mul_(kb.unsqueeze(-3))
    else:
        X = (rb.unsqueeze(-2) * torch.exp(decay)) * kb.unsqueeze(-3)
    pair = X.sum(-1) * _level_mask(base, base, r)  # (.., nb, i, j)
    del X, decay
    # onto the block diagonal of A: a view of A's (block, block) diagonal, shaped (.., i, j, nb)
    blocks = A.unflatten(-1, (nb, base)).unflatten(-3, (nb, base)).diagonal(dim1=-4, dim2=-2)
    blocks.add_(pair.movedim(-3, -1))
    before, after = _prefix_suffix_sums(gb)
    q = (rb * torch.exp(before)).flatten(-3, -2)
    kd = (kb * torch.exp(after)).flatten(-3, -2)
    return A, q, kd, total


def _level_mask(L: int, h: int, like: torch.Tensor) -> torch.Tensor:
    """(L, L) 0/1 matrix: 1 where j < i, i and j in the same block of 2h tokens but different
    halves of it (the pairs that first fall apart when blocks of 2h are halved); for h = L, 1 where
    j < i."""
    return _constant(_level_mask_of, L, h, like.dtype, like.device)


def _level_mask_of(L: int, h: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    i = torch.arange(L, device=device)
    if h == L:
        return (i.view(L, 1) > i).to(dtype)
    row, col = i.view(L, 1), i.view(1, L)
    return ((row // (2 * h) == col // (2 * h)) & (row // h > col // h)).to(dtype)


@functools.lru_cache(maxsize=256)
def _constant(make, *key) -> torch.Tensor:
    """A mask made once per shape, dtype and device: each costs ~10 small operators, and a prefill
    asks for the same few in every layer. Made outside inference mode, so that autograd may save it
    for backward whatever mode the first caller ran in; nobody writes to it."""
    with torch.inference_mode(False):
        return make(*key)


def _prefix_suffix_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For x ``(.., n, N)``: before[i] = x_0 + ... + x_{i-1} and after[j] = x_{j+1} + ... + x_{n-1}.

    A product with a 0/1 matrix: each output is the plain sum of the x's in its range (a zero
    coefficient adds an exact zero). Differences of running sums instead would cancel: after a
    decay of -1e3 a later -1e-4 is lost in float32.
    """
    n = x.shape[-2]
    masks = _constant(_prefix_suffix_masks, n, x.dtype, x.device)  # (2n, n)
    before, after = (masks @ x).split(n, dim=-2)  # split, not slicing: its backward is one cat
    return before, after


def _pair_sums(x: torch.Tensor) -> torch.Tensor:
    """For x ``(.., n, N)``: ``(.., n, n, N)`` with [i, j] = x_{j+1} + ... + x_{i-1} for j < i, 0
    otherwise; a product with a 0/1 matrix, as in ``_prefix_suffix_sums``."""
    n = x.shape[-2]
    return (_constant(_pair_mask, n, x.dtype, x.device) @ x).unflatten(-2, (n, n))


def _prefix_suffix_masks(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, device=device)
    return torch.cat([i.view(n, 1) > i, i.view(n, 1) < i]).to(dtype)


def _pair_mask(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, device=device)
    mask = (i.view(n, 1, 1) > i.view(1, 1, n)) & (i.view(1, 1, n) > i.view(1, n, 1))  # (i, j, t)
    return mask.reshape(n * n, n).to(dtype)
