"""The four language models of the long-context experiment, one interface.

Every model has ``forward_hidden(tokens [B, T], state) -> (hidden [B, T, C], state)`` and a
``head`` (C -> V): the evaluator feeds a document chunk by chunk, passing the state back in.

- ``rwkv4``: ``RWKV4LM``, RWKV-4 time mixing (``TimeMixV4`` of the MQAR code, run with its state
  ``(a, b, p)`` and token shift carried) plus the Eagle-style channel mixing (``ChannelMix`` of a
  5.2 config, which is RWKV-4's: ``time_mix_k``/``time_mix_r`` lerp, squared ReLU, sigmoid gate).
- ``eagle`` / ``finch``: ``eaglefinch.RWKV`` with a 5.2 / 6.0 config.
- ``transformer``: ``TransformerLM``, pre-LayerNorm blocks of causal softmax attention with rotary
  position embeddings (RoPE) and a GELU MLP of the same hidden width as channel mixing. It has no
  state: it is evaluated on a whole document in one causal pass.

Why RoPE: learned absolute positions have no embedding past the training length, so they cannot be
evaluated there at all; RoPE (as in Llama, gpt-fast and litgpt) defines every position and is the
usual baseline, and its known weakness (rotation angles never seen in training) is exactly what the
paper's figure contrasts with the recurrent models. ALiBi would extrapolate more gently; it is not
what current models use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eaglefinch.config import RWKVConfig
from eaglefinch.errors import ConfigError
from eaglefinch.experiments.mqar.models import TimeMixV4, rwkv_head_size
from eaglefinch.model.channel_mix import ChannelMix
from eaglefinch.model.init import layer_ratios
from eaglefinch.model.rwkv import RWKV
from eaglefinch.ops.wkv4 import wkv4

MODELS: tuple[str, ...] = ("rwkv4", "eagle", "finch", "transformer")
LABELS = {"rwkv4": "RWKV-4", "eagle": "Eagle", "finch": "Finch", "transformer": "Transformer (RoPE)"}

# Per layer: (att shift (B, C), (a, b, p) each (B, C), ffn shift (B, C)).
RWKV4State = list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]


class StatefulTimeMixV4(TimeMixV4):
    """``TimeMixV4`` that takes and returns its token shift and WKV state."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, shift: torch.Tensor, state: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """``x``: (B, T, C), ``shift``: (B, C). Returns (out (B, T, C), new shift, new (a, b, p))."""
        sx = torch.cat([shift.unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, C) previous tokens
        xk = sx + (x - sx) * self.time_mix_k
        xv = sx + (x - sx) * self.time_mix_v
        xr = sx + (x - sx) * self.time_mix_r
        wkv, state = wkv4(self.key(xk), self.value(xv), torch.exp(self.time_decay), self.time_first, state)
        return self.output(torch.sigmoid(self.receptance(xr)) * wkv), x[:, -1], state


class RWKV4Block(nn.Module):
    def __init__(self, d_model: int, layer_id: int, n_layer: int):
        super().__init__()
        self.ln0 = nn.LayerNorm(d_model) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.att = StatefulTimeMixV4(d_model, layer_id, n_layer)
        self.ffn = ChannelMix(
            RWKVConfig("5.2", n_layer=n_layer, n_embd=d_model, head_size=rwkv_head_size(d_model))
        )
        with torch.no_grad():  # the official RWKV-4 channel-mixing init
            r1 = layer_ratios(layer_id, n_layer)[1]
            ddd = (torch.arange(d_model, dtype=torch.float64) / d_model) ** r1
            self.ffn.time_mix_k.copy_(ddd.view(1, 1, -1))
            self.ffn.time_mix_r.copy_(ddd.view(1, 1, -1))
            nn.init.orthogonal_(self.ffn.key.weight)
            nn.init.zeros_(self.ffn.value.weight)
            nn.init.zeros_(self.ffn.receptance.weight)

    def forward(self, x, layer_state):
        att_shift, wkv_state, ffn_shift = layer_state
        if self.ln0 is not None:
            x = self.ln0(x)
        dx, att_shift, wkv_state = self.att(self.ln1(x), att_shift, wkv_state)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + dx, (att_shift, wkv_state, ffn_shift)


class RWKV4LM(nn.Module):
    """An RWKV-4 language model: embedding, ``n_layer`` RWKV-4 blocks, LayerNorm, head."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int):
        super().__init__()
        self.d_model = d_model
        self.emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(RWKV4Block(d_model, i, n_layer) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
            gain = 0.5 * math.sqrt(vocab_size / d_model) if vocab_size > d_model else 0.5
            nn.init.orthogonal_(self.head.weight, gain=gain)

    def forward_hidden(self, tokens: torch.Tensor, state: RWKV4State | None = None):
        """``tokens`` (B, T) -> (hidden (B, T, C), state)."""
        x = self.emb(tokens)
        B, C = tokens.shape[0], self.d_model
        if state is None:
            zero = x.new_zeros(B, C)
            state = [(zero, None, zero) for _ in self.blocks]
        new_state = []
        for block, layer_state in zip(self.blocks, state, strict=True):
            x, layer_state = block(x, layer_state)
            new_state.append(layer_state)
        return self.ln_out(x), new_state


def rope_tables(T: int, head_size: int, offset: int = 0, base: float = 10000.0, device=None):
    """cos, sin of shape (T, head_size / 2) for positions offset..offset+T-1 (computed in float64)."""
    inv = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device=device) / head_size)
    angles = torch.arange(offset, offset + T, dtype=torch.float64, device=device)[:, None] * inv
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :N/2], x[..., N/2:]) of ``x`` (B, nh, T, N) by the position's angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RoPEAttention(nn.Module):
    def __init__(self, d_model: int, head_size: int):
        super().__init__()
        self.n_head, self.head_size = d_model // head_size, head_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)
        )  # (B, nh, T, hs)
        cos, sin = rope_tables(T, self.head_size, device=x.device)
        y = F.scaled_dot_product_attention(
            apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, is_causal=True
        )
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, head_size: int, d_ffn: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.att = RoPEAttention(d_model, head_size)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ffn, bias=False), nn.GELU(), nn.Linear(d_ffn, d_model, bias=False)
        )
        nn.init.zeros_(self.mlp[2].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.att(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Pre-LayerNorm RoPE Transformer; ``forward_hidden`` needs the whole prefix (no state)."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, head_size: int, d_ffn: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, head_size, d_ffn) for _ in range(n_layer))
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.emb.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward_hidden(self, tokens: torch.Tensor, state: None = None):
        """``tokens`` (B, T) -> (hidden (B, T, C), None)."""
        if state is not None:
            raise ConfigError("the Transformer keeps no state: pass the whole prefix")
        x = self.emb(tokens)
        for block in self.blocks:
            x = block(x)
        return self.ln_out(x), None


def make_model(name: str, vocab_size: int, d_model: int, n_layer: int) -> nn.Module:
    """One of ``MODELS`` at width ``d_model`` and depth ``n_layer`` (head size ``rwkv_head_size``)."""
    head_size = rwkv_head_size(d_model)
    if name == "rwkv4":
        return RWKV4LM(vocab_size, d_model, n_layer)
    if name in ("eagle", "finch"):
        version = "5.2" if name == "eagle" else "6.0"
        return RWKV(
            RWKVConfig(version, n_layer=n_layer, n_embd=d_model, head_size=head_size, vocab_size=vocab_size)
        )
    if name == "transformer":
        d_ffn = RWKVConfig("6.0", n_layer=n_layer, n_embd=d_model, head_size=head_size).dim_ffn
        return TransformerLM(vocab_size, d_model, n_layer, head_size, d_ffn)
    raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def is_recurrent(model: nn.Module) -> bool:
    """True for the models that carry a state between chunks."""
    return not isinstance(model, TransformerLM)
