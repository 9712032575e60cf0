"""The optimiser of the official trainer: AdamW, with parameter groups by role.

RWKV-LM (``configure_optimizers``, layerwise_lr on) puts ``time_decay`` in a group at twice the
learning rate, every other ``time_*`` parameter and the LoRA matrices (``*_w1``, ``*_w2``) at the
base rate without weight decay, and decays only the remaining matrices (``p.squeeze().dim() >= 2``:
the projections, the embedding and the head). Norm weights and biases are never decayed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from eaglefinch.errors import ConfigError

LR_SCALE_KEY = "lr_scale"  # per group: its learning rate is lr_scale * the schedule's rate


def group_of(name: str, param: torch.Tensor) -> str:
    """'decay_2x', 'no_decay' or 'decay' for a parameter name as it appears in the model."""
    leaf = name.rsplit(".", 1)[-1]
    if name.removeprefix("module.").startswith("initial_state."):
        return "no_decay"  # a tuned state is not a weight matrix
    if leaf == "time_decay":
        return "decay_2x"  # (named for the decay of the state, not weight decay: it gets none)
    if leaf.startswith("time_") or leaf.endswith(("_w1", "_w2")):
        return "no_decay"
    if param.squeeze().dim() >= 2:
        return "decay"
    return "no_decay"


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: (time_decay, 2x lr, no wd), (other 1-D and time_* / LoRA, no wd), (matrices, wd)."""
    buckets: dict[str, list[tuple[str, nn.Parameter]]] = {"decay_2x": [], "no_decay": [], "decay": []}
    for name, param in named:
        if param.requires_grad:
            buckets[group_of(name, param)].append((name, param))
    settings = {"decay_2x": (2.0, 0.0), "no_decay": (1.0, 0.0), "decay": (1.0, weight_decay)}
    groups = []
    for key, members in buckets.items():
        if members:
            scale, wd = settings[key]
            groups.append(
                {
                    "params": [p for _, p in members],
                    "names": [n for n, _ in members],
                    "weight_decay": wd,
                    LR_SCALE_KEY: scale,
                    "group": key,
                }
            )
    return groups


def make_optimizer(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; call ``set_lr`` before each step to apply the schedule."""
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ConfigError(f"Adam betas must lie in [0, 1), got {betas}")
    if eps <= 0:
        raise ConfigError(f"Adam eps must be positive, got {eps}")
    groups = param_groups(model.named_parameters(), weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(LR_SCALE_KEY, 1.0)
