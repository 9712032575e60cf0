"""The squared ReLU of channel mixing: plain autograd's values, its gradients to one ulp, one tensor saved."""

from __future__ import annotations

import pytest
import torch

from eaglefinch.model.channel_mix import SquaredReLU, squared_relu


def sample(dtype: torch.dtype) -> torch.Tensor:
    z = torch.randn(4, 37, 96, generator=torch.Generator().manual_seed(0)).to(dtype)
    z[0, 0, :8] = 0.0  # relu's kink: the gradient there is 0, as plain autograd gives
    return z


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_values_and_gradients_equal_plain_autograd(dtype):
    z = sample(dtype)
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out_a = squared_relu(a)
    out_b = torch.relu(b).square()
    assert torch.equal(out_a, out_b)
    out_a.backward(grad)
    out_b.backward(grad)
    # sqrt(relu(z) ** 2) gives relu(z) back to within one unit in the last place
    ulp = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float64: 2.0**-52}[dtype]
    assert torch.allclose(a.grad.double(), b.grad.double(), rtol=2 * ulp, atol=0)
    exact = grad.double() * 2 * torch.relu(z.double())
    assert torch.allclose(a.grad.double(), exact, rtol=4 * ulp, atol=0)


def test_gradcheck_float64():
    z = (torch.randn(3, 5, 7, dtype=torch.float64) + 0.1).requires_grad_(True)
    z.data[z.data.abs() < 1e-3] = 0.5  # keep finite differences away from the kink
    assert torch.autograd.gradcheck(SquaredReLU.apply, (z,))


def test_keeps_only_its_output():
    z = sample(torch.float32).requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = squared_relu(z)
    assert len(saved) == 1 and saved[0].data_ptr() == out.data_ptr()
