"""The Eagle / Finch language model: embedding, a stack of blocks, output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from eaglefinch.config import RWKVConfig
from eaglefinch.errors import ConfigError
from eaglefinch.model.channel_mix import ChannelMix
from eaglefinch.model.state import RWKVState
from eaglefinch.model.time_mix import TimeMixV5, TimeMixV6


class Block(nn.Module):
    """Pre-LayerNorm residual block: time mixing, then channel mixing (layer 0 also normalises the input)."""

    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMixV5(config) if config.version == "5.2" else TimeMixV6(config)
        self.ffn = ChannelMix(config)

    def forward(
        self,
        x: torch.Tensor,
        att_shift: torch.Tensor,
        wkv: torch.Tensor,
        ffn_shift: torch.Tensor,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """With ``last_only``, the output (B, 1, C) of the last position alone: the channel mixing,
        whose outputs nothing but the next layer reads, then runs on that position (its token shift
        is the one before); the state comes out whole."""
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, att_shift, wkv = self.att(self.ln1(x), att_shift, wkv)
        x = x + dx
        if last_only and x.shape[1] > 1:
            xx = self.ln2(x[:, -2:])
            dx, ffn_shift = self.ffn(xx[:, 1:], xx[:, 0])
            return x[:, -1:] + dx, att_shift, wkv, ffn_shift
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + dx, att_shift, wkv, ffn_shift


class RWKV(nn.Module):
    """An Eagle (RWKV-5.2) or Finch (RWKV-6.0) language model.

    Parameter names are the official ones, so an official ``.pth`` state dict loads one to one.
    ``RWKV(config)`` initialises as the official trainer does (see ``eaglefinch.model.init``);
    on the meta device it only allocates shapes.
    """

    def __init__(self, config: RWKVConfig, *, init: bool = True):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Recompute each block's activations in the backward instead of keeping them (training
        # memory: the blocks' inputs only, for one more forward); see set_grad_checkpointing.
        self.grad_checkpointing = False
        if init and self.emb.weight.device.type != "meta":
            from eaglefinch.model.init import init_weights

            init_weights(self)

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        # The head's: fine-tuning may keep the frozen embedding in 16 bits (finetune.frozen),
        # while the model computes, and its states are kept, in this dtype.
        return self.head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def zero_state(self, batch_size: int = 1) -> RWKVState:
        """The state before any token: zeros, or the checkpoint's tuned ``time_state`` where it has one."""
        state = RWKVState.zeros(self.config, batch_size, device=self.device, dtype=self.dtype)
        if self.config.time_state:
            tuned = torch.stack([b.att.time_state.detach().float().transpose(1, 2) for b in self.blocks])
            state.wkv[:] = tuned.unsqueeze(1)
        return state

    def set_wkv_mode(self, mode: str) -> None:
        """Choose the WKV kernel for every layer: "auto", "chunked" or "recurrent"."""
        if mode not in ("auto", "chunked", "recurrent"):
            raise ConfigError(f"unknown WKV mode {mode!r}: use 'auto', 'chunked' or 'recurrent'")
        for block in self.blocks:
            block.att.wkv_mode = mode

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Keep only each block's inputs for the backward and recompute the rest there
        (``torch.utils.checkpoint``, non-reentrant), as RWKV-LM's ``grad_cp`` does."""
        self.grad_checkpointing = bool(enabled)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ConfigError(f"tokens must be a LongTensor of shape [B, T], got {shape}")
        if tokens.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise ConfigError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.numel() and not torch.compiler.is_compiling():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ConfigError(
                    f"token id {bad} is outside this model's vocabulary [0, {self.config.vocab_size})"
                )

    def forward_hidden(
        self, tokens: torch.Tensor, state: RWKVState | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, RWKVState]:
        """Run the blocks; return the final normalised hidden states (B, T, C) and the new state
        (with ``last_only``, (B, 1, C) for the last position: the last block's channel mixing then
        runs on that position alone)."""
        self._check_tokens(tokens)
        B, T = tokens.shape
        if T == 0:
            raise ConfigError("tokens must hold at least one position (T >= 1)")
        if state is None:
            state = self.zero_state(B)
        else:
            state.check(self.config, B)
        x = self.emb(tokens.long())
        att_shifts, wkvs, ffn_shifts = [], [], []
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            args = (
                x,
                state.att_shift[i],
                state.wkv[i],
                state.ffn_shift[i],
                last_only and i == len(self.blocks) - 1,
            )
            if recompute:
                x, a, w, f = checkpoint(block, *args, use_reentrant=False)
            else:
                x, a, w, f = block(*args)
            att_shifts.append(a)
            wkvs.append(w)
            ffn_shifts.append(f)
        new_state = RWKVState(
            att_shift=torch.stack(att_shifts).to(state.att_shift.dtype),
            wkv=torch.stack(wkvs).float(),
            ffn_shift=torch.stack(ffn_shifts).to(state.ffn_shift.dtype),
        )
        return self.ln_out(x), new_state

    def forward(
        self, tokens: torch.Tensor, state: RWKVState | None = None, *, last_only: bool = False
    ) -> tuple[torch.Tensor, RWKVState]:
        """``logits, state = model(tokens, state)``.

        Args:
            tokens: LongTensor [B, T] (T = 1 decodes one step; T > 1 prefills or trains).
            state: the state after the previous tokens, or ``None`` to start fresh.
            last_only: compute logits for the last position only (prefill), shape [B, 1, V]; the
                last block's channel mixing then runs on that position alone (equal to rounding).

        Returns:
            ``(logits [B, T, V] float32, state)``.
        """
        hidden, state = self.forward_hidden(tokens, state, last_only=last_only)
        return self.head(hidden).float(), state

    def loss(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        state: RWKVState | None = None,
        ignore_index: int = -100,
    ) -> tuple[torch.Tensor, RWKVState]:
        """Mean next-token cross-entropy of ``targets`` [B, T] given ``tokens`` [B, T]."""
        logits, state = self(tokens, state)
        loss = F.cross_entropy(
            logits.view(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=ignore_index
        )
        return loss, state
