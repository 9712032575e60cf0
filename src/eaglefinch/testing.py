"""Random official-format checkpoints, for tests and benchmarks (no download needed).

The values are drawn in the ranges trained models show, so that every part of the network
matters to the output (the official initialisation zeroes several matrices, which would hide bugs).
"""

from __future__ import annotations

import torch

from eaglefinch.config import RWKVConfig


@torch.no_grad()
def random_state_dict(
    config: RWKVConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A state dict with the official keys and shapes and random values."""
    from eaglefinch.model.rwkv import RWKV

    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in RWKV(config, init=False).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
            t = 1 + 0.2 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name == "emb.weight":
            t = torch.randn(shape, generator=gen)
        elif leaf.startswith(("time_mix_", "time_maa_")) and leaf[-2:] not in ("w1", "w2"):
            t = torch.rand(shape, generator=gen)
        elif leaf == "time_decay":
            t = torch.empty(shape).uniform_(-5.0, 1.0, generator=gen)  # decays from 0.993 to 0.066
        elif leaf == "time_faaaa":
            t = 0.5 * torch.randn(shape, generator=gen)
        elif leaf == "time_state":
            t = 0.3 * torch.randn(shape, generator=gen)
        elif leaf in ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"):
            t = 0.1 * torch.randn(shape, generator=gen)
        else:  # (out, in) matrices
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        out[name] = t.to(dtype).contiguous()
    return out
