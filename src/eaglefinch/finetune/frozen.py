"""Frozen weights stored in 16 bits and computed in float32: the memory of LoRA and state tuning.

A released checkpoint holds its weights in bfloat16. Loaded for fine-tuning they become float32,
twice the bytes, although LoRA and state tuning never change them. ``store_frozen`` keeps the
embedding and every block projection that does not train in a 16-bit dtype, and has each product
upcast its weight on the way in (one weight at a time, freed after use): where the 16-bit value
is the weight's value exactly (``dtype="auto"`` checks that, weight by weight), the arithmetic
is the float32 model's, number for number. The head stays in float32 (the chunked loss multiplies
through it once per chunk, and a float32 copy of it per chunk would cost more than it saves), as
do the small vectors and LoRA matrices of the time mix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eaglefinch.checkpoint import parse_dtype
from eaglefinch.errors import ConfigError

CHOICES = ("auto", "fp32", "bf16", "fp16")


class _UpcastProduct(torch.autograd.Function):
    """``x @ weight.T`` with a 16-bit ``weight`` upcast to ``x``'s dtype; keeps the 16-bit weight
    (not its upcast copy) for the backward, where it upcasts again. No gradient for the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        return F.linear(x, weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return (grad @ weight.to(grad.dtype)).to(ctx.input_dtype), None


class FrozenLinear(nn.Linear):
    """A bias-free ``nn.Linear`` whose frozen weight is stored in a 16-bit dtype (state dict key
    ``weight`` as before); peft adapts it as it adapts an ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _UpcastProduct.apply(x, self.weight)
        return F.linear(x, self.weight.to(x.dtype))


class FrozenEmbedding(nn.Embedding):
    """An ``nn.Embedding`` stored in a 16-bit dtype whose rows come out in ``compute_dtype``."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens).to(self.compute_dtype)


def _represents(weight: torch.Tensor, dtype: torch.dtype, chunk: int = 1 << 20) -> bool:
    """Whether every value of ``weight`` is a ``dtype`` number (checked a chunk at a time, so that
    the check of a 200 MB embedding costs a few MB)."""
    flat = weight.reshape(-1)
    return all(
        torch.equal(flat[i : i + chunk].to(dtype).to(flat.dtype), flat[i : i + chunk])
        for i in range(0, flat.numel(), chunk)
    )


def _lossless_dtype(weight: torch.Tensor, wanted: str) -> torch.dtype | None:
    """The 16-bit dtype to store ``weight`` in, or None to leave it."""
    if wanted != "auto":
        target = parse_dtype(wanted)
        return None if target == weight.dtype else target
    return next((d for d in (torch.bfloat16, torch.float16) if _represents(weight, d)), None)


def _candidates(model: nn.Module):
    """(parent, attribute name, module) of every frozen plain projection and embedding but the head."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) not in (nn.Linear, nn.Embedding) or child.weight.requires_grad:
                continue
            if name == "head" or child.weight.dtype not in (torch.float32, torch.float64):
                continue
            if type(child) is nn.Linear and child.bias is not None:
                continue
            yield parent, name, child


def store_frozen(model: nn.Module, dtype: str = "auto") -> dict[str, int]:
    """Keep ``model``'s frozen embedding and block projections in 16 bits; returns how many
    weights went to each dtype (``{"bfloat16": 96, ...}``).

    ``dtype``: ``"auto"`` stores a weight in bfloat16 (else float16) only where that loses nothing,
    as for every weight of a bfloat16 checkpoint; ``"bf16"``/``"fp16"`` store every frozen weight so,
    rounding it; ``"fp32"`` changes nothing. ``model`` may be a peft model: the adapted
    projections' base layers are stored, the adapters are not touched.
    """
    if dtype not in CHOICES:
        raise ConfigError(f"unknown frozen-weight dtype {dtype!r}: use one of {', '.join(CHOICES)}")
    counts: dict[str, int] = {}
    if dtype == "fp32":
        return counts
    # One weight at a time (no reference to the float32 ones kept, so each is freed once its
    # copy is in place), smallest first: the embedding's copy is made when the rest is stored.
    found = sorted(
        (child.weight.numel(), id(child), parent, name) for parent, name, child in _candidates(model)
    )
    for *_, parent, name in found:
        child = getattr(parent, name)
        target = _lossless_dtype(child.weight.detach(), dtype)
        if target is None:
            continue
        weight = nn.Parameter(child.weight.detach().to(target), requires_grad=False)
        if type(child) is nn.Embedding:
            stored = FrozenEmbedding(
                child.num_embeddings,
                child.embedding_dim,
                padding_idx=child.padding_idx,
                _weight=weight,
                _freeze=True,
            )
            stored.compute_dtype = child.weight.dtype
        else:
            stored = FrozenLinear(child.in_features, child.out_features, bias=False, device="meta")
            stored.weight = weight
        setattr(parent, name, stored)
        key = str(target).removeprefix("torch.")
        counts[key] = counts.get(key, 0) + 1
    return counts
