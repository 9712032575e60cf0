"""The head and the cross-entropy fused, a few tokens at a time: the logits never exist whole.

A vocabulary of 65,536 makes the logits the largest tensor of a training step by far (256 MiB
per 1024 tokens in float32), and plain autograd through ``head`` and ``F.cross_entropy`` holds
three of them at once in the backward (the logits, their log-softmax and its gradient). Here the
forward keeps, per token, only the log-sum-exp (and, for L2Wrap, the largest logit and where it
is); the backward rebuilds each chunk's logits into one buffer, turns them into the softmax in
place, subtracts the one-hot target, adds L2Wrap's pull, and multiplies through the head. One
``chunk x vocabulary`` buffer is alive at a time, in the forward and in the backward.

The arithmetic is that of ``F.cross_entropy(head(h).float(), t, reduction="sum")`` with the
trainer's L2Wrap (``loop._L2Wrap``): the gradient of the loss at each logit is
``softmax - onehot`` (zero on ignored targets), plus ``factor * max_logit`` at the argmax of each
pulled position, independent of the incoming gradient as in RWKV-LM.
"""

from __future__ import annotations

import torch

from eaglefinch.finetune.data import IGNORE


def _logits(h: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, V) logits of one chunk in float32 (float64 stays), the product taken in ``dtype``."""
    out = h.to(dtype) @ weight.to(dtype).t()
    return out if out.dtype in (torch.float32, torch.float64) else out.float()


class ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk`` tokens at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, factor: float, pulled):
        """``hidden`` (N, C), ``weight`` (V, C), ``targets`` (N,) with IGNORE skipped; ``pulled``:
        (N,) bool of the positions L2Wrap pulls (None: all), ``factor``: its weight (0: none)."""
        device_type = hidden.device.type
        dtype = (
            torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        )
        N = hidden.shape[0]
        float_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        lse = hidden.new_empty(N, dtype=float_dtype)
        top = hidden.new_zeros(N, 1, dtype=float_dtype)
        ids = torch.zeros(N, 1, dtype=torch.long, device=hidden.device)
        total = hidden.new_zeros((), dtype=float_dtype)
        with torch.autocast(device_type, enabled=False):
            for i in range(0, N, chunk):
                logits = _logits(hidden[i : i + chunk], weight, dtype)
                t = targets[i : i + chunk]
                valid = t != IGNORE
                picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
                peak, where = logits.max(dim=1, keepdim=True)
                if factor:
                    top[i : i + chunk], ids[i : i + chunk] = peak, where
                # log-sum-exp in place: the chunk's logits are not needed again in the forward
                sums = logits.sub_(peak).exp_().sum(dim=1)
                lse[i : i + chunk] = peak.squeeze(1) + sums.log()
                total += ((lse[i : i + chunk] - picked) * valid).sum()
        if factor and pulled is not None:
            top *= pulled.unsqueeze(1).to(top.dtype)
        ctx.save_for_backward(hidden, weight, targets, lse, top, ids)
        ctx.chunk, ctx.factor, ctx.dtype = chunk, factor, dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, targets, lse, top, ids = ctx.saved_tensors
        chunk, factor, dtype = ctx.chunk, ctx.factor, ctx.dtype
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        accumulate = torch.float64 if dtype == torch.float64 else torch.float32
        grad_weight = (
            torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if want_weight else None
        )
        g = grad_total.to(accumulate)
        for i in range(0, hidden.shape[0], chunk):
            h = hidden[i : i + chunk]
            t = targets[i : i + chunk]
            probs = _logits(h, weight, dtype).sub_(lse[i : i + chunk].unsqueeze(1)).exp_()
            valid = (t != IGNORE).unsqueeze(1)
            rows = torch.arange(probs.shape[0], device=probs.device)
            probs[rows, t.clamp(min=0)] -= 1.0
            probs.mul_(valid.to(probs.dtype) * g)  # ignored targets contribute nothing
            if factor:
                probs.scatter_add_(1, ids[i : i + chunk], top[i : i + chunk] * factor)
            grad = probs if probs.dtype == dtype else probs.to(dtype)
            del probs
            if want_hidden:
                grad_hidden[i : i + chunk] = grad @ weight.to(dtype)
            if want_weight and dtype == accumulate:
                grad_weight.addmm_(grad.t(), h)  # in place: no second (V, C) buffer
            elif want_weight:
                grad_weight += (grad.t() @ h.to(dtype)).to(accumulate)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunked_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    factor: float = 0.0,
    pulled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden (B, T, C) @ weight.T`` against ``targets (B, T)``.

    ``factor`` > 0 adds L2Wrap's gradient at the positions ``pulled`` (B, T) (None: all).
    """
    C = hidden.shape[-1]
    flat_pulled = None if pulled is None else pulled.reshape(-1)
    return ChunkedHeadLoss.apply(
        hidden.reshape(-1, C), weight, targets.reshape(-1), max(1, chunk), factor, flat_pulled
    )
