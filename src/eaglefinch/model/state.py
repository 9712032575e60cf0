"""The recurrent state: the RNN's whole memory of the tokens it has seen, constant in size.

Per layer: the time-mixing shift vector (the previous token's normalised input, C), the per-head
WKV matrices (H, N, N, key index first) and the channel-mixing shift vector (C). Tensors are
stacked over layers so that a state batches, slices, copies and serialises as three tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eaglefinch.config import RWKVConfig
from eaglefinch.errors import StateError


@dataclass
class RWKVState:
    att_shift: torch.Tensor  # (L, B, C) previous token's LN1 output
    wkv: torch.Tensor  # (L, B, H, N, N) float32 matrix-valued states
    ffn_shift: torch.Tensor  # (L, B, C) previous token's LN2 output

    @classmethod
    def zeros(
        cls,
        config: RWKVConfig,
        batch_size: int = 1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RWKVState:
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            att_shift=torch.zeros(L, batch_size, C, device=device, dtype=dtype),
            wkv=torch.zeros(L, batch_size, H, N, N, device=device, dtype=torch.float32),
            ffn_shift=torch.zeros(L, batch_size, C, device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    @property
    def n_layer(self) -> int:
        return self.wkv.shape[0]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"att_shift": self.att_shift, "wkv": self.wkv, "ffn_shift": self.ffn_shift}

    def _map(self, fn) -> RWKVState:
        return RWKVState(**{name: fn(t) for name, t in self.tensors().items()})

    def clone(self) -> RWKVState:
        return self._map(torch.clone)

    def detach(self) -> RWKVState:
        """Cut the autograd graph (truncated backpropagation through time)."""
        return self._map(torch.Tensor.detach)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RWKVState:
        """Move to a device; ``dtype`` applies to the shift vectors only (WKV matrices stay float32)."""
        return RWKVState(
            att_shift=self.att_shift.to(device=device, dtype=dtype),
            wkv=self.wkv.to(device=device),
            ffn_shift=self.ffn_shift.to(device=device, dtype=dtype),
        )

    def select(self, rows: int | Sequence[int] | torch.Tensor) -> RWKVState:
        """The states of some batch rows (an int keeps a batch of one)."""
        if isinstance(rows, int):
            rows = [rows]
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return self._map(lambda t: t.index_select(1, index))

    def repeat(self, n: int) -> RWKVState:
        """Fork a batch-of-one state into ``n`` identical rows (several continuations of one prompt)."""
        if self.batch_size != 1:
            raise StateError(f"repeat() forks a batch of one; this state has {self.batch_size} rows")
        return self._map(lambda t: t.expand(t.shape[0], n, *t.shape[2:]).clone())

    @classmethod
    def cat(cls, states: Sequence[RWKVState]) -> RWKVState:
        """Stack states of the same model along the batch dimension."""
        if not states:
            raise StateError("cat() needs at least one state")
        return cls(
            **{name: torch.cat([s.tensors()[name] for s in states], dim=1) for name in states[0].tensors()}
        )

    def check(self, config: RWKVConfig, batch_size: int | None = None) -> None:
        """Raise a clear StateError if this state does not fit ``config`` (and the batch)."""
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        expected = {"att_shift": (L, C), "wkv": (L, H, N, N), "ffn_shift": (L, C)}
        for name, tensor in self.tensors().items():
            got = (tensor.shape[0], *tensor.shape[2:])
            if tensor.dim() != len(expected[name]) + 1 or got != expected[name]:
                raise StateError(
                    f"state tensor {name} has shape {tuple(tensor.shape)}, but this model "
                    f"(L{L} D{C}, {H} heads of {N}) needs (L, B, ...) = {expected[name]} around the batch"
                )
        rows = {t.shape[1] for t in self.tensors().values()}
        if len(rows) != 1:
            raise StateError(f"state tensors disagree on the batch size: {sorted(rows)}")
        if batch_size is not None and self.batch_size != batch_size:
            raise StateError(
                f"state has {self.batch_size} rows but the tokens have {batch_size}; "
                "use state.select(...) or state.repeat(n) to match"
            )
