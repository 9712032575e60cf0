"""RWKV-4 WKV: the chunked form against the float64 reference loop and the softmax definition."""

from __future__ import annotations

import pytest
import torch

from eaglefinch.ops.wkv4 import wkv4
from eaglefinch.ops.wkv4_reference import wkv4_reference, wkv4_softmax

# (atol, rtol) per input dtype of the fast form, against the float64 reference
TOLERANCES = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-4), torch.bfloat16: (3e-2, 3e-2)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    atol, rtol = TOLERANCES[dtype]
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs()
    rel_rms = (err.square().mean() / expected.square().mean().clamp_min(1e-30)).sqrt().item()
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (
        f"{what}: max abs error {err.max().item():.3e}, relative RMS error {rel_rms:.3e}"
    )


def make_inputs(B: int, T: int, C: int, seed: int, k_scale: float = 1.0, w_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * k_scale
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    w = torch.rand(C, generator=g, dtype=torch.float64) * 3 * w_scale  # decay rates 0 .. 3 w_scale
    u = torch.randn(C, generator=g, dtype=torch.float64)
    return k, v, w, u


CASES = [
    pytest.param(1, 1, 3, 4, id="B1-T1-C3-L4"),
    pytest.param(2, 15, 5, 4, id="B2-T15-C5-L4"),
    pytest.param(2, 16, 4, 16, id="B2-T16-C4-L16"),
    pytest.param(3, 37, 6, 8, id="B3-T37-C6-L8"),
    pytest.param(1, 64, 8, 64, id="B1-T64-C8-L64"),
    pytest.param(2, 7, 5, 32, id="B2-T7-C5-L32-one-short-chunk"),
]


def test_reference_matches_softmax_definition():
    """Two independent oracles: the running-max recurrence and the masked softmax over all pairs."""
    k, v, w, u = make_inputs(2, 23, 5, seed=1, k_scale=3.0)
    y, _ = wkv4_reference(k, v, w, u)
    assert_close(y, wkv4_softmax(k, v, w, u), torch.float64, "reference vs softmax")


def test_reference_hand_worked_single_channel():
    """T = 3, one channel, w = ln 2 (each step halves), u = 0, k = 0: plain weighted averages."""
    w = torch.tensor([torch.log(torch.tensor(2.0)).item()])
    k = torch.zeros(1, 3, 1)
    v = torch.tensor([[[1.0], [2.0], [4.0]]])
    y, _ = wkv4_reference(k, v, w, torch.zeros(1))
    # t0: v0 = 1; t1: (1*1 + 1*2) / 2 = 1.5; t2: (0.5*1 + 1*2 + 1*4) / 2.5 = 2.6
    assert torch.allclose(y.flatten(), torch.tensor([1.0, 1.5, 2.6], dtype=torch.float64))


@pytest.mark.parametrize("B,T,C,L", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_outputs_and_state_match_reference(B, T, C, L, dtype):
    k, v, w, u = make_inputs(B, T, C, seed=T)
    y, state = wkv4(k.to(dtype), v.to(dtype), w.to(dtype), u.to(dtype), chunk_size=L)
    assert y.dtype == dtype and y.shape == (B, T, C)
    # the reference in float64 from the same rounded inputs, so only the kernel's error is measured
    y_ref, state_ref = wkv4_reference(*(t.to(dtype) for t in (k, v, w, u)))
    assert_close(y, y_ref, dtype, "wkv")
    # the state is (a, b, p) with a free common exponent: compare what it stands for, a e^p and b e^p
    for name, got, want in (("a e^p", state[0], state_ref[0]), ("b e^p", state[1], state_ref[1])):
        assert_close(got.double() * state[2].double().exp(), want * state_ref[2].exp(), torch.float32, name)


def test_large_keys_and_decays_stay_finite():
    """Keys of +-60 and decays up to 60 per step overflow a naive exp in float32; the running max must not."""
    k, v, w, u = make_inputs(2, 40, 4, seed=3, k_scale=60.0, w_scale=20.0)
    y, _ = wkv4(k.float(), v.float(), w.float(), u.float(), chunk_size=8)
    assert torch.isfinite(y).all()
    assert_close(y, wkv4_reference(k, v, w, u)[0], torch.float32, "large exponents")


def test_initial_state_splits_a_sequence():
    """Running the first part, then the rest from the returned state, equals one pass."""
    k, v, w, u = make_inputs(2, 29, 5, seed=4)
    whole, _ = wkv4(k, v, w, u, chunk_size=4)
    first, state = wkv4(k[:, :13], v[:, :13], w, u, chunk_size=4)
    rest, _ = wkv4(k[:, 13:], v[:, 13:], w, u, state, chunk_size=4)
    assert_close(torch.cat([first, rest], dim=1), whole, torch.float64, "split")
    ref_rest, _ = wkv4_reference(k[:, 13:], v[:, 13:], w, u, wkv4_reference(k[:, :13], v[:, :13], w, u)[1])
    assert_close(rest, ref_rest, torch.float64, "from a reference state")


@pytest.mark.parametrize("T,L", [(1, 4), (13, 4), (32, 8)], ids=lambda x: str(x))
def test_gradients_match_reference(T, L):
    """Gradients of a random projection of the output for k, v, w, u and the initial state."""
    k, v, w, u = make_inputs(2, T, 5, seed=10 + T, k_scale=2.0)
    g = torch.Generator().manual_seed(0)
    a0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    b0 = torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.5
    p0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    proj = torch.randn(2, T, 5, generator=g, dtype=torch.float64)

    def grads(fn):
        inputs = [t.clone().requires_grad_() for t in (k, v, w, u, a0, b0, p0)]
        y, (a, b, p) = fn(*inputs[:4], tuple(inputs[4:]))
        loss = (y * proj).sum() + (a * p.exp()).sum() + (b * p.exp()).sum()
        return torch.autograd.grad(loss, inputs)

    fast = grads(lambda k, v, w, u, s: wkv4(k, v, w, u, s, chunk_size=L))
    ref = grads(wkv4_reference)
    for name, gf, gr in zip(("k", "v", "w", "u", "a0", "b0", "p0"), fast, ref, strict=True):
        assert_close(gf, gr, torch.float64, f"d{name}")


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        wkv4(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2), torch.zeros(2), torch.zeros(2))
