"""The fused chunked head loss against plain autograd through the head, L2Wrap and cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eaglefinch.train.chunked_loss import chunked_head_loss
from eaglefinch.train.loop import _L2Wrap

V, C = 97, 16


def reference(hidden, weight, targets, factor, pulled):
    """Float64 autograd of the trainer's plain path: logits, L2Wrap, summed cross-entropy."""
    logits = hidden @ weight.t()
    if factor:
        logits = _L2Wrap.apply(logits, factor, pulled)
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="sum")


def case(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 13, C, generator=gen, dtype=dtype).requires_grad_(True)
    weight = torch.randn(V, C, generator=gen, dtype=dtype).requires_grad_(True)
    targets = torch.randint(0, V, (3, 13), generator=gen)
    targets[0, :6] = -100  # a masked prompt
    targets[2, 10:] = -100  # padding
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [1, 5, 39, 1000])
@pytest.mark.parametrize("factor", [0.0, 0.25])
@pytest.mark.parametrize("masked_pull", [False, True])
def test_loss_and_gradients_match_autograd_in_float64(chunk, factor, masked_pull):
    hidden, weight, targets = case()
    pulled = targets != -100 if masked_pull else None
    loss = chunked_head_loss(hidden, weight, targets, chunk, factor, pulled)
    got = torch.autograd.grad(loss * 0.7, (hidden, weight))
    expected_loss = reference(hidden, weight, targets, factor, pulled)
    expected = torch.autograd.grad(expected_loss * 0.7, (hidden, weight))
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_state_does():
    hidden, weight, targets = case()
    weight.requires_grad_(False)
    chunked_head_loss(hidden, weight, targets, 4).backward()
    assert weight.grad is None
    (expected,) = torch.autograd.grad(reference(hidden, weight, targets, 0.0, None), (hidden,))
    torch.testing.assert_close(hidden.grad, expected, rtol=1e-10, atol=1e-12)


def test_bfloat16_head_matches_the_plain_bfloat16_path():
    """A bf16 head multiplies in bf16 and takes the softmax in float32, as head(h).float() does."""
    hidden, weight, targets = case(torch.bfloat16, seed=3)
    loss = chunked_head_loss(hidden, weight, targets, 8, 0.1)
    got = torch.autograd.grad(loss, (hidden, weight))
    logits = _L2Wrap.apply((hidden @ weight.t()).float(), 0.1, None)
    plain = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="sum")
    expected = torch.autograd.grad(plain, (hidden, weight))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-4)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e.float(), rtol=2e-2, atol=2e-2)


def test_under_autocast_the_product_is_taken_in_the_autocast_dtype():
    hidden, weight, targets = case(torch.float32, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_head_loss(hidden, weight, targets, 8)
        plain = F.cross_entropy(
            (hidden @ weight.t()).float().reshape(-1, V), targets.reshape(-1), reduction="sum"
        )
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-4)
    grads = torch.autograd.grad(loss, (hidden, weight))
    expected = torch.autograd.grad(plain, (hidden, weight))
    for g, e in zip(grads, expected, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)
