"""The sequence mixers compared on MQAR, and the small language model that wraps them.

Every model is ``embedding -> L x (x + mixer(LayerNorm(x))) -> LayerNorm -> head`` with no channel
mixing (MLP), as in Zoology's MQAR runs: 4 layers for the recurrent mixers, 2 for attention, which
alone gets learned position embeddings. The head shares the embedding matrix (as Zoology's
language model does). ``MQARModel.scored_logits`` applies the head only at the labelled positions:
an MQAR example of length T has just N of them, and the head is a (d x 8192) matrix.

Mixers (each maps ``(B, T, d)`` to ``(B, T, d)``):

- ``rwkv4``: RWKV-4 ("Dove") time mixing, a vector state of 2d numbers per layer (``ops.wkv4``).
- ``eagle`` / ``finch``: ``TimeMixV5`` / ``TimeMixV6`` from ``eaglefinch.model``, matrix-valued states.
  Head size ``min(64, d / 4)`` (16 at d = 64, 32 at 128, 64 from 256): at least 4 heads at every
  width, the released models' 64 where the width allows it.
- ``attention``: causal softmax attention (``scaled_dot_product_attention``), one head as in Zoology.
- ``mamba``: Hugging Face transformers' ``MambaMixer`` (state 16, expand 2, conv 4), with
  ``mambapy``'s parallel scan where it is installed (optional extra ``eaglefinch[mamba]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from eaglefinch.config import RWKVConfig
from eaglefinch.errors import ConfigError
from eaglefinch.model.init import init_time_mix, layer_ratios
from eaglefinch.model.time_mix import TimeMixV5, TimeMixV6
from eaglefinch.ops.wkv4 import wkv4

MODELS: tuple[str, ...] = ("rwkv4", "eagle", "finch", "attention", "mamba")
LABELS = {"rwkv4": "RWKV-4", "eagle": "Eagle", "finch": "Finch", "attention": "Attention", "mamba": "Mamba"}
MAMBA_HINT = "pip install 'eaglefinch[mamba]' (transformers and mambapy)"


def rwkv_head_size(d_model: int) -> int:
    """Head size for Eagle and Finch at width d_model: min(64, d/4), so there are always several heads."""
    return min(64, max(1, d_model // 4))


def _orthogonal_(weight: torch.Tensor, scale: float) -> None:
    """Orthogonal init with the official trainer's gain: sqrt(out/in) where out > in, times ``scale``."""
    out_dim, in_dim = weight.shape
    gain = math.sqrt(out_dim / in_dim) if out_dim > in_dim else 1.0
    if scale == 0.0:
        nn.init.zeros_(weight)
    else:
        nn.init.orthogonal_(weight, gain=gain * scale)


class TimeMixV4(nn.Module):
    """RWKV-4 time mixing: token shift, then ``output(sigmoid(r) * wkv4(k, v))``.

    Parameter names follow the official RWKV-4 checkpoints: ``time_decay`` (w = exp(time_decay)),
    ``time_first`` (the bonus u), ``time_mix_{k,v,r}`` (interpolation between this token and the last).
    """

    def __init__(self, d_model: int, layer_id: int, n_layer: int):
        super().__init__()
        C = d_model
        self.time_decay = nn.Parameter(torch.empty(C))
        self.time_first = nn.Parameter(torch.empty(C))
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.reset_parameters(layer_id, n_layer)

    @torch.no_grad()
    def reset_parameters(self, layer_id: int, n_layer: int) -> None:
        """The official RWKV-4 (v4neo) init: decay -5 + 8 (n/(C-1))^(0.7 + 1.3 r0), bonus log 0.3 + zigzag."""
        C = self.time_decay.numel()
        r0, r1 = layer_ratios(layer_id, n_layer)
        n = torch.arange(C, dtype=torch.float64)
        ddd = n / C
        self.time_decay.copy_(-5 + 8 * (n / max(C - 1, 1)) ** (0.7 + 1.3 * r0))
        self.time_first.copy_(math.log(0.3) + ((n + 1) % 3 - 1) * 0.5)
        self.time_mix_k.copy_((ddd**r1).view(1, 1, C))
        self.time_mix_v.copy_((ddd**r1 + 0.3 * r0).view(1, 1, C))
        self.time_mix_r.copy_((ddd ** (0.5 * r1)).view(1, 1, C))
        _orthogonal_(self.key.weight, 0.1)
        _orthogonal_(self.value.weight, 1.0)
        _orthogonal_(self.receptance.weight, 1.0)
        _orthogonal_(self.output.weight, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, C) -> (B, T, C)."""
        sx = F.pad(x, (0, 0, 1, -1))  # (B, T, C): the previous token, zero before the first
        xk = sx + (x - sx) * self.time_mix_k
        xv = sx + (x - sx) * self.time_mix_v
        xr = sx + (x - sx) * self.time_mix_r
        wkv, _ = wkv4(self.key(xk), self.value(xv), torch.exp(self.time_decay), self.time_first)
        return self.output(torch.sigmoid(self.receptance(xr)) * wkv)


@torch.no_grad()
def init_eagle_finch(mix: TimeMixV5 | TimeMixV6, layer_id: int, n_layer: int) -> None:
    """The official x052/x060 init for one time-mixing layer (the formulas of ``eaglefinch.model.init``).

    One simplification: ``ln_x`` starts at weight 1 at every depth (the trainer scales it with depth).
    """
    init_time_mix(mix, layer_id, n_layer)
    mix.ln_x.weight.fill_(1.0)
    mix.ln_x.bias.zero_()
    for name, scale in (("receptance", 1.0), ("key", 0.1), ("value", 1.0), ("gate", 0.1), ("output", 0.0)):
        _orthogonal_(getattr(mix, name).weight, scale)


class EagleFinchMixer(nn.Module):
    """``TimeMixV5`` / ``TimeMixV6`` run from a zero token-shift and a zero WKV state."""

    def __init__(self, version: str, d_model: int, layer_id: int, n_layer: int):
        super().__init__()
        config = RWKVConfig(
            version=version, n_layer=n_layer, n_embd=d_model, head_size=rwkv_head_size(d_model)
        )
        self.mix = TimeMixV5(config) if version == "5.2" else TimeMixV6(config)
        init_eagle_finch(self.mix, layer_id, n_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, C) -> (B, T, C)."""
        B, _, C = x.shape
        H, N = self.mix.n_head, self.mix.head_size
        shift = x.new_zeros(B, C)
        state = torch.zeros(B, H, N, N, dtype=torch.float32, device=x.device)
        out, _, _ = self.mix(x, shift, state)
        return out


class CausalSelfAttention(nn.Module):
    """Softmax attention with a causal mask, through ``scaled_dot_product_attention``."""

    def __init__(self, d_model: int, n_head: int = 1):
        super().__init__()
        if d_model % n_head:
            raise ConfigError(f"attention width {d_model} is not a multiple of {n_head} heads")
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        )  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


def mamba_available() -> bool:
    """True when transformers' Mamba mixer can be imported."""
    try:
        from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: F401
    except ImportError:
        return False
    return True


class MambaBlockMixer(nn.Module):
    """Hugging Face transformers' ``MambaMixer`` with ``mambapy``'s parallel scan when it is installed."""

    def __init__(self, d_model: int, layer_id: int, n_layer: int):
        super().__init__()
        try:
            from transformers import MambaConfig
            from transformers.models.mamba.modeling_mamba import MambaMixer
        except ImportError:
            raise ConfigError(f"model 'mamba' needs transformers: {MAMBA_HINT}") from None
        try:
            import mambapy  # noqa: F401

            use_mambapy = True
        except ImportError:  # transformers then scans token by token: correct, much slower
            use_mambapy = False
        config = MambaConfig(
            hidden_size=d_model,
            state_size=16,
            expand=2,
            conv_kernel=4,
            num_hidden_layers=n_layer,
            use_mambapy=use_mambapy,
            vocab_size=1,
        )
        self.mixer = MambaMixer(config, layer_idx=layer_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, T, C) -> (B, T, C)."""
        return self.mixer(x)


def make_mixer(name: str, d_model: int, layer_id: int, n_layer: int) -> nn.Module:
    """One mixer layer of the named model."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "rwkv4": lambda: TimeMixV4(d_model, layer_id, n_layer),
        "eagle": lambda: EagleFinchMixer("5.2", d_model, layer_id, n_layer),
        "finch": lambda: EagleFinchMixer("6.0", d_model, layer_id, n_layer),
        "attention": lambda: CausalSelfAttention(d_model),
        "mamba": lambda: MambaBlockMixer(d_model, layer_id, n_layer),
    }
    if name not in factories:
        raise ConfigError(f"unknown MQAR model {name!r}; choose from {', '.join(MODELS)}")
    return factories[name]()


def default_layers(name: str) -> int:
    """Zoology's depths: 2 layers for attention, 4 for the recurrent mixers."""
    return 2 if name == "attention" else 4


class Block(nn.Module):
    """Pre-LayerNorm residual block without channel mixing: ``x + mixer(LN(x))``."""

    def __init__(self, mixer: nn.Module, d_model: int):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.ln(x))


class MQARModel(nn.Module):
    """A small language model: embedding, blocks of one mixer type, final LayerNorm, tied head."""

    def __init__(self, name: str, d_model: int, vocab_size: int, max_len: int, n_layer: int | None = None):
        super().__init__()
        n_layer = default_layers(name) if n_layer is None else n_layer
        self.name = name
        self.emb = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.emb.weight, std=0.02)
        # Attention alone has no notion of order without positions; the recurrent mixers need none.
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02) if name == "attention" else None
        self.blocks = nn.ModuleList(
            Block(make_mixer(name, d_model, i, n_layer), d_model) for i in range(n_layer)
        )
        self.ln_out = nn.LayerNorm(d_model)

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs``: (B, T) token ids -> (B, T, d) final normalised hidden states."""
        x = self.emb(inputs)
        if self.pos is not None:
            x = x + self.pos[: inputs.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x)

    def scored_logits(self, inputs: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
        """Logits at the labelled positions only.

        ``inputs``, ``labels``: (B, T). Returns ``(logits (M, V), targets (M,))`` for the M positions
        whose label is not ``ignore_index``, in row-major order.
        """
        h = self.hidden(inputs)
        scored = labels != ignore_index  # (B, T)
        return h[scored] @ self.emb.weight.t(), labels[scored]
