"""The Triton WKV kernels against the float64 reference: outputs and every gradient.

Without a CUDA device they run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set
by tests/conftest.py before triton is imported); ``pytest -m triton`` runs them alone.
Shapes are small: the interpreter executes each program in numpy.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from wkv_cases import Case, assert_matches, make_inputs, reference, run_with_grads

from eaglefinch.ops import wkv, wkv_chunked, wkv_reference

triton = pytest.importorskip("triton", reason="the Triton kernels need triton: pip install 'eaglefinch[gpu]'")

from eaglefinch.ops.triton import wkv_chunked_triton, wkv_step_triton, wkv_triton  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(kernel):
    """Run ``kernel`` on DEVICE copies of CPU inputs and bring the results back (autograd follows)."""

    def run(*args):
        y, state = kernel(*(a.to(DEVICE) if a is not None else None for a in args))
        return y.cpu(), state.cpu()

    return run


def assert_decay_gradient_close(dlog_w, expected, inputs, dr, dk):
    """d log_w is a difference of sums of r dr and k dk (ops/triton/wkv_chunked.py): its rounding is
    relative to what those sums add up, not to d log_w itself, which is ~0 where every decay is
    strong or where no state came before (the first token without an initial state)."""
    mass = (inputs["r"] * dr).abs().sum(1).max() + (inputs["k"] * dk).abs().sum(1).max()
    error = (dlog_w.double() - expected).abs().max()
    assert torch.isfinite(dlog_w).all() and error <= 1e-5 * mass, (error, mass)


def _cases():
    cases = []
    for decay in ("finch", "eagle"):
        cases += [
            Case(2, 1, 2, 16, decay, torch.float32),  # one token
            Case(2, 37, 2, 16, decay, torch.float32),  # inside one chunk, not a whole number of sub-chunks
            Case(1, 64, 1, 32, decay, torch.float32),  # exactly one chunk
            Case(2, 133, 1, 16, decay, torch.float32),  # three chunks, the last one partial
            Case(1, 20, 1, 24, decay, torch.float32),  # a head size that is not a power of two
        ]
    return [pytest.param(case, id=case.id) for case in cases]


@pytest.mark.parametrize("case", _cases())
def test_chunked_matches_reference(case: Case):
    actual = run_with_grads(on_device(wkv_chunked_triton), make_inputs(case), case.dtype)
    assert actual["y"].dtype == case.dtype and actual["state"].dtype == torch.float32
    assert_matches(actual, reference(case), case.dtype, f"triton {case.id}")


def _extreme_cases():
    return [
        pytest.param(Case(1, 80, 2, 16, decay, torch.float32, log_w=log_w), id=f"{decay}-{log_w}")
        for log_w in ("zero", "strong7", "mixed")
        for decay in ("finch", "eagle")
    ]


@pytest.mark.parametrize("case", _extreme_cases())
def test_extreme_decay(case: Case):
    """log_w = 0 everywhere, -e^7 (~ -1.1e3) everywhere, and a mix of 0, -1e-4, -0.5, -e^7, -e^10,
    -1e30 and -inf: finite and as accurate as ordinary decays."""
    inputs, expected = make_inputs(case), reference(case)
    actual = run_with_grads(on_device(wkv_chunked_triton), inputs, case.dtype)
    assert_decay_gradient_close(actual["dlog_w"], expected["dlog_w"], inputs, expected["dr"], expected["dk"])
    actual["dlog_w"] = expected["dlog_w"]
    assert_matches(actual, expected, case.dtype, f"triton extreme {case.id}")


def test_weak_decay_after_strong_keeps_precision():
    """A decay of e^-1e3 every 9 tokens and -0.01 elsewhere: exponents summed, never differenced."""
    case = Case(1, 64, 1, 16, "finch", torch.float32)
    inputs = make_inputs(case)
    log_w = torch.full((1, 64, 1, 16), -0.01, dtype=torch.float64)
    log_w[:, ::9] = -1000.0
    inputs["log_w"] = log_w
    expected = run_with_grads(wkv_reference, inputs, torch.float64)
    assert_matches(
        run_with_grads(on_device(wkv_chunked_triton), inputs, torch.float32),
        expected,
        torch.float32,
        "triton",
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("decay", ["finch", "eagle"])
def test_half_precision_inputs(dtype: torch.dtype, decay: str):
    """bf16/fp16 inputs: float32 arithmetic (fp16 matrix products take fp16 operands), y in the
    input dtype, the state in float32, everything within the dtype's tolerance."""
    case = Case(2, 70, 2, 16, decay, dtype)
    actual = run_with_grads(on_device(wkv_chunked_triton), make_inputs(case), dtype)
    assert actual["y"].dtype == dtype and actual["state"].dtype == torch.float32
    assert_matches(actual, reference(case), dtype, f"triton {case.id}")


def test_no_initial_state_and_no_state_gradient():
    case = Case(1, 50, 2, 16, "finch", torch.float32)
    x = make_inputs(case)
    leaves = [x[n].float().requires_grad_() for n in ("r", "k", "v", "log_w", "u")]
    y, state = wkv_chunked_triton(*(t.to(DEVICE) for t in leaves))
    (y.double().cpu() * x["dy"]).sum().backward()  # the final state takes no gradient
    leaves64 = [x[n].clone().requires_grad_() for n in ("r", "k", "v", "log_w", "u")]
    y64, state64 = wkv_reference(*leaves64)
    (y64 * x["dy"]).sum().backward()
    torch.testing.assert_close(y.cpu().double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.cpu().double(), state64, rtol=1e-5, atol=1e-5)
    r, k, v, log_w, u = leaves
    for a, e in ((r, leaves64[0]), (k, leaves64[1]), (v, leaves64[2]), (u, leaves64[4])):
        torch.testing.assert_close(a.grad.double(), e.grad, rtol=1e-4, atol=1e-5)
    grads64 = {"dr": leaves64[0].grad, "dk": leaves64[1].grad}
    assert_decay_gradient_close(log_w.grad, leaves64[3].grad, x, grads64["dr"], grads64["dk"])


def test_empty_sequence_returns_the_state():
    state = torch.randn(1, 2, 16, 16, device=DEVICE)
    r = torch.randn(1, 0, 2, 16, device=DEVICE)
    y, out = wkv_chunked_triton(
        r, r, r, torch.zeros(2, 16, device=DEVICE), torch.zeros(2, 16, device=DEVICE), state
    )
    assert y.shape == (1, 0, 2, 16)
    torch.testing.assert_close(out, state)


@pytest.mark.parametrize("decay", ["finch", "eagle"])
def test_step_matches_the_float64_step(decay: str):
    """The fused step against the float64 reference, from log_w and from w, the state in place.

    Two float32 steps summing N = 24 products in different orders can lie 2e-6 (1 + |y|) apart
    (these inputs put the fused and the torch step 1.9e-6 apart), and each lies up to 2e-6 (1 + |y|)
    from float64; the fused step is held to twice that, against the exact answer."""
    torch.manual_seed(0)
    B, H, N = 3, 2, 24
    r, k, v = (torch.randn(B, H, N, device=DEVICE) for _ in range(3))
    log_w = -torch.exp(torch.randn((B, H, N) if decay == "finch" else (H, N), device=DEVICE))
    u, state = torch.randn(H, N, device=DEVICE), torch.randn(B, H, N, N, device=DEVICE)
    log_w_bt = log_w.unsqueeze(1) if decay == "finch" else log_w  # Eagle's (H, N) broadcasts
    y_64, state_64 = wkv_reference(*(t.unsqueeze(1) for t in (r, k, v)), log_w_bt, u, state)
    # from log_w, and from the decay itself, as the decoder keeps it
    for decay_arg, w_is_log in ((log_w, True), (torch.exp(log_w), False)):
        in_place = state.clone()
        y = wkv_step_triton(r, k, v, decay_arg, u, in_place, w_is_log=w_is_log)
        torch.testing.assert_close(y.double(), y_64.squeeze(1), rtol=4e-6, atol=4e-6)
        torch.testing.assert_close(in_place.double(), state_64, rtol=4e-6, atol=4e-6)


def test_step_refuses_a_bad_state():
    r = torch.randn(1, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous float32"):
        wkv_step_triton(r, r, r, r, r[0], torch.zeros(1, 2, 16, 16, dtype=torch.float64, device=DEVICE))


def test_bad_shapes_get_one_line_errors():
    r = torch.randn(1, 5, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"u must be \[H, N\]"):
        wkv_chunked_triton(r, r, r, r, torch.zeros(3, 16, device=DEVICE))
    with pytest.raises(ValueError, match="log_w must broadcast"):
        wkv_chunked_triton(r, r, r, torch.zeros(3, 16, device=DEVICE), torch.zeros(2, 16, device=DEVICE))
    with pytest.raises(ValueError, match="share a"):
        wkv_chunked_triton(r, r[:, :4], r, r, torch.zeros(2, 16, device=DEVICE))


# ---------------------------------------------------------------------------------------------
# Dispatch: EAGLEFINCH_KERNEL


def _inputs(T=9, dtype=torch.float32):
    torch.manual_seed(1)
    r, k, v = (torch.randn(1, T, 2, 16, dtype=dtype) for _ in range(3))
    return r, k, v, -torch.exp(torch.randn(1, T, 2, 16, dtype=dtype)), torch.randn(2, 16, dtype=dtype)


def _spy(monkeypatch):
    import eaglefinch.ops.triton as triton_ops

    calls = []
    real = triton_ops.wkv_triton
    monkeypatch.setattr(triton_ops, "wkv_triton", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU dispatch under the interpreter")
def test_cpu_runs_torch_unless_triton_is_forced(monkeypatch):
    calls = _spy(monkeypatch)
    x = _inputs()
    monkeypatch.delenv("EAGLEFINCH_KERNEL", raising=False)
    y_auto, _ = wkv(*x)
    assert calls == []  # CPU behaviour is unchanged by default
    monkeypatch.setenv("EAGLEFINCH_KERNEL", "triton")
    y_triton, _ = wkv(*x)
    assert calls == [1]
    torch.testing.assert_close(y_triton, y_auto, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("EAGLEFINCH_KERNEL", "torch")
    wkv(*x)
    assert calls == [1]


def test_unknown_kernel_choice_is_one_line(monkeypatch):
    monkeypatch.setenv("EAGLEFINCH_KERNEL", "cuda")
    with pytest.raises(
        ValueError, match="EAGLEFINCH_KERNEL='cuda' is not a kernel choice: use one of auto, torch, triton"
    ):
        wkv(*_inputs())


def test_unsupported_dtype_falls_back_with_one_warning(monkeypatch):
    calls = _spy(monkeypatch)
    monkeypatch.setenv("EAGLEFINCH_KERNEL", "triton")
    x = [t.to(DEVICE) for t in _inputs(dtype=torch.float64)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, _ = wkv(*x)
        wkv(*x)
    assert calls == []
    messages = [str(w.message) for w in caught if "Triton WKV kernels" in str(w.message)]
    assert len(messages) <= 1 and (messages or _warned_before())
    torch.testing.assert_close(y.cpu(), wkv_chunked(*_inputs(dtype=torch.float64))[0])


def _warned_before() -> bool:
    from eaglefinch.ops import kernel_choice

    return kernel_choice._warn_once.cache_info().currsize > 0


def test_wkv_triton_steps_one_token_without_grad():
    r, k, v, log_w, u = _inputs(T=1)
    state = torch.randn(1, 2, 16, 16)
    dev = [t.to(DEVICE) for t in (r, k, v, log_w, u, state)]
    with torch.no_grad():
        y, out = wkv_triton(*dev)
    y_ref, out_ref = wkv_reference(r, k, v, log_w, u, state)
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cpu().double(), out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dev[-1].cpu(), state)  # the caller's state is not touched
    assert math.isfinite(out.sum().item())


# ---------------------------------------------------------------------------------------------
# A whole model through the Triton kernels against the same model through the torch forms


def _tiny_model(version: str):
    from eaglefinch import RWKV, RWKVConfig
    from eaglefinch.testing import random_state_dict

    config = RWKVConfig(version, n_layer=2, n_embd=128, vocab_size=97)
    model = RWKV(config, init=False)
    model.load_state_dict(random_state_dict(config, seed=3))
    return model.to(DEVICE)


def _loss_and_grads(model, tokens, monkeypatch, kernel: str):
    monkeypatch.setenv("EAGLEFINCH_KERNEL", kernel)
    model.zero_grad()
    logits, state = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), state.wkv.detach(), grads


@pytest.mark.parametrize("version", ["5.2", "6.0"], ids=["eagle", "finch"])
def test_model_training_step_matches_torch_path(version: str, monkeypatch):
    """Logits, final states and every parameter's gradient of a 2-layer model (head size 64), with
    the Triton kernels and with the torch chunked form."""
    model = _tiny_model(version)
    tokens = torch.randint(0, 97, (2, 21), device=DEVICE)
    calls = _spy(monkeypatch)
    logits, wkv_state, grads = _loss_and_grads(model, tokens, monkeypatch, "triton")
    assert len(calls) == 2  # one per layer
    logits_ref, wkv_ref, grads_ref = _loss_and_grads(model, tokens, monkeypatch, "torch")
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wkv_state, wkv_ref, rtol=1e-4, atol=1e-4)
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    for name, g in grads.items():
        scale = grads_ref[name].abs().max().clamp_min(1e-12)
        assert (g - grads_ref[name]).abs().max() <= 1e-4 * scale, name


@torch.no_grad()
@pytest.mark.parametrize("version", ["5.2", "6.0"], ids=["eagle", "finch"])
def test_decoder_steps_match_torch_path(version: str, monkeypatch):
    """Batched single-token decoding with the fused step kernel (state updated in place)."""
    import eaglefinch.ops.triton as triton_ops
    from eaglefinch.model.decode import DecodeModel

    model = _tiny_model(version).eval()
    tokens = torch.randint(0, 97, (3, 4), device=DEVICE)
    calls, real = [], triton_ops.wkv_step_triton
    monkeypatch.setattr(triton_ops, "wkv_step_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    runs = {}
    for kernel in ("triton", "torch"):
        monkeypatch.setenv("EAGLEFINCH_KERNEL", kernel)
        decoder = DecodeModel(model)
        state = decoder.zero_state(3)
        runs[kernel] = (torch.stack([decoder.step(tokens[:, t], state) for t in range(4)]), state.wkv)
    assert len(calls) == 2 * 4  # layers x steps, and only on the Triton run
    torch.testing.assert_close(runs["triton"][0], runs["torch"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs["triton"][1], runs["torch"][1], rtol=1e-5, atol=1e-5)
