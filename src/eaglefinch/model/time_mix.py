"""Time mixing: the multi-head matrix-valued recurrence of Eagle (5.2) and Finch (6.0).

Both share the projections, the bonus ``time_faaaa``, the per-head GroupNorm ``ln_x``, the SiLU
gate and the output projection. They differ in how the token shift interpolates and in the decay:
Eagle learns a fixed per-channel decay, Finch computes it from the token (a LoRA on top of
``time_decay``) and makes the interpolation itself data-dependent ("ddlerp").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eaglefinch.config import RWKVConfig
from eaglefinch.ops import wkv

LN_X_EPS = 64e-5  # the official GroupNorm eps (the trainer's 1e-5 applied to y / 8)


class TimeMix(nn.Module):
    """Parts common to both versions; subclasses supply ``mix`` (interpolated inputs and log-decay)."""

    def __init__(self, config: RWKVConfig):
        super().__init__()
        C, A = config.n_embd, config.dim_att
        self.n_head, self.head_size = config.n_head, config.head_size
        self.time_faaaa = nn.Parameter(
            torch.zeros(self.n_head, self.head_size)
        )  # bonus u for the current token
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(self.n_head, A, eps=LN_X_EPS)
        if config.time_state:
            # A tuned initial state, stored (H, value, key): the transpose of our (key, value) layout.
            self.time_state = nn.Parameter(torch.zeros(self.n_head, self.head_size, self.head_size))
        self.wkv_mode = "auto"  # "auto" | "chunked" | "recurrent", see eaglefinch.ops.wkv

    def mix(
        self, xx: torch.Tensor, sx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (xr, xk, xv, xg, log_w): the four interpolated inputs and the log-decay."""
        raise NotImplementedError

    def forward(
        self, xx: torch.Tensor, shift: torch.Tensor, wkv_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``xx``: (B, T, C) output of LN1; ``shift``: (B, C); ``wkv_state``: (B, H, N, N) float32.

        Returns (out (B, T, C), new shift (B, C), new wkv state (B, H, N, N)).
        """
        B, T, _ = xx.shape
        H, N = self.n_head, self.head_size
        sx = torch.cat([shift.unsqueeze(1).to(xx.dtype), xx[:, :-1]], dim=1)  # (B, T, C) previous tokens
        xr, xk, xv, xg, log_w = self.mix(xx, sx)
        r = self.receptance(xr).view(B, T, H, N)
        k = self.key(xk).view(B, T, H, N)
        v = self.value(xv).view(B, T, H, N)
        g = F.silu(self.gate(xg))
        y, wkv_state = wkv(r, k, v, log_w, self.time_faaaa, wkv_state, mode=self.wkv_mode)
        # GroupNorm in float32: y can be large, and bf16 statistics would lose the parity.
        y = F.group_norm(
            y.reshape(B * T, H * N).float(), H, self.ln_x.weight.float(), self.ln_x.bias.float(), LN_X_EPS
        )
        out = self.output(y.view(B, T, H * N).to(xx.dtype) * g)
        # The new shift is copied out: a view would keep the whole (B, T, C) input alive as long as
        # the state, through every layer of the forward.
        return out, xx[:, -1].clone(), wkv_state


class TimeMixV5(TimeMix):
    """Eagle: learned lerp per target (``time_mix_*``) and a fixed decay w = exp(-exp(time_decay))."""

    def __init__(self, config: RWKVConfig):
        super().__init__(config)
        C = config.n_embd
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, C))
        self.time_mix_g = nn.Parameter(torch.ones(1, 1, C))
        self.time_decay = nn.Parameter(torch.zeros(self.n_head, self.head_size))

    def mix(self, xx, sx):
        dx = xx - sx
        xr = sx + dx * self.time_mix_r
        xk = sx + dx * self.time_mix_k
        xv = sx + dx * self.time_mix_v
        xg = sx + dx * self.time_mix_g
        log_w = -torch.exp(self.time_decay.float())  # (H, N), the same for every token
        return xr, xk, xv, xg, log_w


class TimeMixV6(TimeMix):
    """Finch: data-dependent lerp (ddlerp, a LoRA on the shifted difference) and data-dependent decay."""

    def __init__(self, config: RWKVConfig):
        super().__init__(config)
        C, A = config.n_embd, config.dim_att
        R, D = config.tm_lora_rank, config.decay_lora_rank
        self.time_maa_x = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_w = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_v = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_g = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * R))  # one rank-R LoRA each for w, k, v, r, g
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, R, C))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, A))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, D))
        self.time_decay_w2 = nn.Parameter(torch.zeros(D, A))

    def mix(self, xx, sx):
        B, T, C = xx.shape
        dx = sx - xx
        xxx = xx + dx * self.time_maa_x
        lora = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)  # (5, B*T, R)
        mw, mk, mv, mr, mg = torch.bmm(lora, self.time_maa_w2).view(5, B, T, C).unbind(0)
        xw = xx + dx * (self.time_maa_w + mw)
        xk = xx + dx * (self.time_maa_k + mk)
        xv = xx + dx * (self.time_maa_v + mv)
        xr = xx + dx * (self.time_maa_r + mr)
        xg = xx + dx * (self.time_maa_g + mg)
        d = self.time_decay.float() + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).float()
        log_w = -torch.exp(d).view(B, T, self.n_head, self.head_size)  # (B, T, H, N), per token
        return xr, xk, xv, xg, log_w
