"""Channel mixing (the feed-forward half of a block), shared by Eagle and Finch."""

from __future__ import annotations

import torch
from torch import nn

from eaglefinch.config import RWKVConfig


class SquaredReLU(torch.autograd.Function):
    """``relu(z) ** 2`` that keeps only its output for the backward.

    Plain autograd keeps ``relu(z)`` (for the square) beside the output, which the value projection
    keeps anyway: one (B, T, dim_ffn) tensor per layer, the largest of the block. The gradient
    ``2 relu(z)`` is recovered as ``2 sqrt(out)``, which gives back ``relu(z)`` to within one unit
    in the last place (tests/model/test_channel_mix.py).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        out = torch.relu(z).square()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * 2 * out.sqrt()


def squared_relu(z: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and z.requires_grad:
        return SquaredReLU.apply(z)
    return torch.relu(z).square()


class ChannelMix(nn.Module):
    """Token-shifted squared-ReLU feed-forward with a sigmoid receptance gate.

    Eagle (5.2) interpolates with ``time_mix_*`` (weight on the current token); Finch (6.0) with
    ``time_maa_*`` (weight on the previous token). Names follow the official checkpoints.
    """

    def __init__(self, config: RWKVConfig):
        super().__init__()
        C, F = config.n_embd, config.dim_ffn
        self.version = config.version
        if self.version == "5.2":
            self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
            self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        else:
            self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
            self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, F, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F, C, bias=False)

    def forward(self, xx: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``xx``: (B, T, C) output of LN2; ``shift``: (B, C) the token before. Returns (out, new shift)."""
        sx = torch.cat([shift.unsqueeze(1).to(xx.dtype), xx[:, :-1]], dim=1)  # (B, T, C) previous tokens
        if self.version == "5.2":
            xk = sx + (xx - sx) * self.time_mix_k
            xr = sx + (xx - sx) * self.time_mix_r
        else:
            xk = xx + (sx - xx) * self.time_maa_k
            xr = xx + (sx - xx) * self.time_maa_r
        k = squared_relu(self.key(xk))
        # The new shift is copied out: a view would keep the whole (B, T, C) input alive as long as
        # the state, through every layer of the forward.
        return torch.sigmoid(self.receptance(xr)) * self.value(k), xx[:, -1].clone()
