"""Initialisation as in the official trainer (RWKV-LM x052 / x060).

With r0 = layer / (L - 1) (0 to 1), r1 = 1 - layer / L (1 to almost 0), ddd[n] = n / C:
time_decay[n] = -6 + 5 (n / (A - 1))^(0.7 + 1.3 r0); time_faaaa[n] = r0 (1 - n / (A - 1)) + zigzag(n);
the token-shift mixes are powers of ddd (Finch stores their complements). Matrices are orthogonal
with gain 1, 0.1 for att.key / att.gate, 0 for att.output, ffn.value and ffn.receptance; the head's
gain is 0.5 sqrt(V / C) (0.5 when V <= C); the embedding is uniform(+-1e-4). The per-head GroupNorm
weight ln_x starts at ((layer + 1) / L)^0.7, the other norms at weight 1, bias 0 (``generate_init_weight``
in RWKV-LM's RWKV-v5/src/model.py, which serves x052 and x060 alike).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eaglefinch.model.time_mix import TimeMix, TimeMixV5

ZERO_MATRICES = (".att.output.", ".ffn.value.", ".ffn.receptance.")
SMALL_MATRICES = (".att.key.", ".att.gate.")


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """(r0, r1): 0 -> 1 and 1 -> almost 0 across depth."""
    r0 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    r1 = 1.0 - layer_id / n_layer
    return r0, r1


def decay_speed(layer_id: int, n_layer: int, dim_att: int) -> torch.Tensor:
    r0, _ = layer_ratios(layer_id, n_layer)
    n = torch.arange(dim_att, dtype=torch.float64)
    return -6 + 5 * (n / max(dim_att - 1, 1)) ** (0.7 + 1.3 * r0)


def bonus(layer_id: int, n_layer: int, dim_att: int) -> torch.Tensor:
    r0, _ = layer_ratios(layer_id, n_layer)
    n = torch.arange(dim_att, dtype=torch.float64)
    zigzag = ((n + 1) % 3 - 1) * 0.1
    return r0 * (1 - n / max(dim_att - 1, 1)) + zigzag


def _put(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.reshape(param.shape).to(param.dtype))


@torch.no_grad()
def init_time_mix(
    att: TimeMix, layer_id: int, n_layer: int, generator: torch.Generator | None = None
) -> None:
    """Set one time-mixing layer's bonus, decay, token-shift mixes and (Finch) decay/mix LoRAs.

    The matrices and ``ln_x`` are left as they are.
    """
    C, A = att.receptance.in_features, att.receptance.out_features
    r0, r1 = layer_ratios(layer_id, n_layer)
    ddd = torch.arange(C, dtype=torch.float64) / C  # (C,)
    _put(att.time_faaaa, bonus(layer_id, n_layer, A))
    _put(att.time_decay, decay_speed(layer_id, n_layer, A))
    if isinstance(att, TimeMixV5):
        _put(att.time_mix_k, ddd**r1)
        _put(att.time_mix_v, ddd**r1 + 0.3 * r0)
        _put(att.time_mix_r, ddd ** (0.5 * r1))
        _put(att.time_mix_g, ddd ** (0.5 * r1))
    else:
        for name in ("time_maa_x", "time_maa_w", "time_maa_k"):
            _put(getattr(att, name), 1 - ddd**r1)
        _put(att.time_maa_v, 1 - (ddd**r1 + 0.3 * r0))
        _put(att.time_maa_r, 1 - ddd ** (0.5 * r1))
        _put(att.time_maa_g, 1 - ddd ** (0.5 * r1))
        att.time_maa_w1.zero_()
        att.time_maa_w2.uniform_(-0.01, 0.01, generator=generator)
        att.time_decay_w1.zero_()
        att.time_decay_w2.uniform_(-0.01, 0.01, generator=generator)


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Initialise ``model`` (an ``eaglefinch.RWKV``) in place as the official trainer does."""
    config = model.config
    L, C, V = config.n_layer, config.n_embd, config.vocab_size
    ddd = torch.arange(C, dtype=torch.float64) / C

    for i, block in enumerate(model.blocks):
        _, r1 = layer_ratios(i, L)
        att, ffn = block.att, block.ffn
        init_time_mix(att, i, L, generator)
        if config.version == "5.2":
            _put(ffn.time_mix_k, ddd**r1)
            _put(ffn.time_mix_r, ddd**r1)
        else:
            _put(ffn.time_maa_k, 1 - ddd**r1)
            _put(ffn.time_maa_r, 1 - ddd**r1)
        for norm in (block.ln1, block.ln2, getattr(block, "ln0", None)):
            if norm is not None:
                norm.weight.fill_(1.0)
                norm.bias.zero_()
        # Deeper layers start with a larger output norm: the trainer's layer scale for ln_x.
        att.ln_x.weight.fill_(((i + 1) / L) ** 0.7)
        att.ln_x.bias.zero_()
    model.ln_out.weight.fill_(1.0)
    model.ln_out.bias.zero_()
    model.emb.weight.uniform_(-1e-4, 1e-4, generator=generator)

    for name, param in model.named_parameters():
        if param.dim() != 2 or not name.endswith(".weight") or name == "emb.weight":
            continue
        if name == "head.weight":
            scale = 0.5 * math.sqrt(V / C) if V > C else 0.5
        elif any(tag in f".{name}" for tag in ZERO_MATRICES):
            scale = 0.0
        elif any(tag in f".{name}" for tag in SMALL_MATRICES):
            scale = 0.1
        else:
            scale = 1.0
        if scale == 0.0:
            param.zero_()
        else:
            nn.init.orthogonal_(param, gain=scale, generator=generator)
