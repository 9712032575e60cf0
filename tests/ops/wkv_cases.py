"""WKV test inputs, the float64 reference's results and the comparison, shared by the kernels' tests.

Inputs are drawn as float64 holding values representable in the dtype under test, so that only a
kernel's own arithmetic is measured. Errors are fla's ratio max|a - b| / max|b|; tolerances are one
table per dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from eaglefinch.ops import wkv_reference

# dtype -> (atol, rtol): a check passes when max|a - b| <= atol or max|a - b| / max|b| <= rtol.
# atol only matters where the expected values are ~0 (say, d log_w when every decay is extreme).
TOLERANCE = {
    torch.float64: (1e-13, 1e-12),
    torch.float32: (1e-6, 2e-5),
    torch.bfloat16: (1e-3, 2e-2),  # y and the input gradients come back in bf16 (8 bits of mantissa)
    torch.float16: (1e-4, 4e-3),  # fp16: 11 bits of mantissa
}
DTYPE_NAME = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# log-decays beyond any trained model's: e^7 ~ 1.1e3 and e^10 ~ 2.2e4 per token, 1e30, -inf (w = 0)
EXTREME_LOG_W = [0.0, -1e-4, -0.5, -math.exp(7), -math.exp(10), -1e30, -math.inf]


@dataclass(frozen=True)
class Case:
    B: int
    T: int
    H: int
    N: int
    decay: str  # "finch" (per token, [B, T, H, N]) or "eagle" (constant, [H, N])
    dtype: torch.dtype
    log_w: str = "random"  # how log_w is drawn, see make_inputs
    seed: int = 0

    @property
    def id(self) -> str:
        extra = "" if self.log_w == "random" else f"-{self.log_w}"
        return f"B{self.B}-T{self.T}-H{self.H}-N{self.N}-{self.decay}{extra}-{DTYPE_NAME[self.dtype]}"


def make_inputs(case: Case) -> dict[str, torch.Tensor]:
    """float64 tensors holding values representable in ``case.dtype`` (the state: in float32)."""
    gen = torch.Generator().manual_seed(case.seed)
    B, T, H, N = case.B, case.T, case.H, case.N
    decay_shape = (B, T, H, N) if case.decay == "finch" else (H, N)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    if case.log_w == "random":  # decays from ~1 - 1e-4 to ~e^-50, most between 0.5 and 0.99
        log_w = -torch.exp(2 * randn(*decay_shape) - 1)
    elif case.log_w == "zero":  # no decay at all
        log_w = torch.zeros(decay_shape, dtype=torch.float64)
    elif case.log_w.startswith("strong"):  # log_w = -e^d for every channel and token
        log_w = torch.full(decay_shape, -math.exp(float(case.log_w[len("strong") :])), dtype=torch.float64)
    elif case.log_w == "mixed":  # each channel (and, for finch, each token) drawn from EXTREME_LOG_W
        pick = torch.randint(len(EXTREME_LOG_W), decay_shape, generator=gen)
        log_w = torch.tensor(EXTREME_LOG_W, dtype=torch.float64)[pick]
    else:
        raise ValueError(case.log_w)
    state_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    return {
        "r": randn(B, T, H, N).to(case.dtype).double(),
        "k": randn(B, T, H, N).to(case.dtype).double(),
        "v": randn(B, T, H, N).to(case.dtype).double(),
        "log_w": log_w.to(case.dtype).double(),
        "u": (0.5 * randn(H, N)).to(case.dtype).double(),
        "state": randn(B, H, N, N).to(state_dtype).double(),
        # cotangents of y and of the final state, so that both paths into every gradient count
        "dy": randn(B, T, H, N),
        "dstate": randn(B, H, N, N),
    }


NAMES = ("y", "state", "dr", "dk", "dv", "dlog_w", "du", "dstate0")


def run_with_grads(kernel, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Run ``kernel`` on ``inputs`` cast to ``dtype`` (state to float32 unless float64) and backpropagate
    <y, dy> + <state, dstate>. Returns y, the final state and the six input gradients."""
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [inputs[n].detach().to(dtype, copy=True).requires_grad_() for n in ("r", "k", "v", "log_w", "u")]
    state0 = inputs["state"].detach().to(state_dtype, copy=True).requires_grad_()
    y, state = kernel(*leaves, state0)
    loss = (y.double() * inputs["dy"]).sum() + (state.double() * inputs["dstate"]).sum()
    loss.backward()
    grads = [x.grad for x in leaves] + [state0.grad]
    return dict(zip(NAMES, [y.detach(), state.detach(), *grads], strict=True))


_reference_cache: dict[Case, dict[str, torch.Tensor]] = {}


def reference(case: Case) -> dict[str, torch.Tensor]:
    """The float64 loop's output and gradients, computed once per input set."""
    if case not in _reference_cache:
        _reference_cache[case] = run_with_grads(wkv_reference, make_inputs(case), torch.float64)
    return _reference_cache[case]


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max-abs error, fla-style relative error max|a - b| / max|b|)."""
    diff = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))


def assert_matches(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype, label: str
) -> None:
    """Every output and gradient finite and within the dtype's tolerance; failures name each one
    with its max-abs and relative error."""
    atol, rtol = TOLERANCE[dtype]
    failures = []
    for name in NAMES:
        a, e = actual[name], expected[name]
        assert a is not None, f"{label}: no gradient for {name}"
        assert a.shape == e.shape, f"{label}: {name} has shape {tuple(a.shape)}, expected {tuple(e.shape)}"
        if not torch.isfinite(a).all():
            failures.append(f"{name}: non-finite values")
            continue
        abs_err, rel_err = errors(a, e)
        if not (abs_err <= atol or rel_err <= rtol):
            failures.append(
                f"{name}: max-abs {abs_err:.3e} (atol {atol:.0e}), relative {rel_err:.3e} (rtol {rtol:.0e})"
            )
    header = f"{label} [{DTYPE_NAME[dtype]}] differs from the float64 reference:"
    assert not failures, "\n  ".join([header, *failures])
