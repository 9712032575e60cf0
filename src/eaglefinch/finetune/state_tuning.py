"""State tuning: learn the recurrent state the model starts from, with every weight frozen.

The initial WKV matrix of every layer (and, optionally, the two token-shift vectors) is the only
trainable tensor: a few hundred kilobytes that steer a frozen model, as RWKV-LM's state tuning
does with ``att.time_state``. The result is saved as a state file (``eaglefinch.save_state``'s
format, carrying the model's identity), which ``eaglefinch generate --load-state`` and
``eaglefinch.load_state`` apply.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from eaglefinch.generation.context import Context
from eaglefinch.generation.states import save_state
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState

NAMES = ("wkv", "att_shift", "ffn_shift")


class InitialState(nn.Module):
    """The trainable initial state of ``model``; ``forward(B)`` gives it as an ``RWKVState`` of B rows.

    Starts from the model's own initial state (zeros, or its checkpoint's ``time_state``).
    """

    def __init__(self, model: RWKV, tune_shift: bool = False):
        super().__init__()
        start = model.zero_state(1)
        self.tune_shift = tune_shift
        self.wkv = nn.Parameter(start.wkv[:, 0].detach().clone())  # (L, H, N, N) float32
        shifts = {"att_shift": start.att_shift[:, 0].float(), "ffn_shift": start.ffn_shift[:, 0].float()}
        for name, value in shifts.items():
            if tune_shift:
                setattr(self, name, nn.Parameter(value.detach().clone()))
            else:
                self.register_buffer(name, value.detach().clone(), persistent=False)

    def forward(self, batch_size: int, dtype: torch.dtype = torch.float32) -> RWKVState:
        L = self.wkv.shape[0]
        return RWKVState(
            att_shift=self.att_shift.to(dtype).unsqueeze(1).expand(L, batch_size, -1),
            wkv=self.wkv.unsqueeze(1).expand(L, batch_size, *self.wkv.shape[1:]),
            ffn_shift=self.ffn_shift.to(dtype).unsqueeze(1).expand(L, batch_size, -1),
        )

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor]) -> RWKVState:
        """A one-row ``RWKVState`` from saved (L, ...) tensors named as in ``NAMES``."""
        return RWKVState(**{name: tensors[name].detach().float().unsqueeze(1).contiguous() for name in NAMES})


def save_tuned_state(
    path: str | os.PathLike, model: RWKV, tensors: dict[str, torch.Tensor], fingerprint: dict | None = None
) -> None:
    """Write the tuned state as a state file for ``model`` (no tokens seen yet, so no logits)."""
    state = InitialState.from_tensors(tensors).to(dtype=model.dtype)
    save_state(path, model, Context(state, None, [[]]), fingerprint=fingerprint)
