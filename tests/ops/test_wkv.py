"""WKV kernels against the float64 reference loop: outputs and every gradient.

The chunked and the recurrent kernel are compared with ``wkv_reference`` on the same inputs (rounded
to the dtype under test first, so that only the kernel's own arithmetic is measured), for the
output, the final state and the gradients of r, k, v, log_w, u and the initial state. Errors are
fla's ratio max|a - b| / max|b|; tolerances are one table per dtype.
"""

from __future__ import annotations

import sys

import pytest
import torch
from wkv_cases import (
    DTYPE_NAME,
    TOLERANCE,
    Case,
    assert_matches,
    errors,
    make_inputs,
    reference,
    run_with_grads,
)

from eaglefinch.ops import wkv, wkv_chunked, wkv_recurrent, wkv_reference

chunked_module = sys.modules["eaglefinch.ops.wkv_chunked"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add wake-up latency (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chunked(chunk_size: int):
    def kernel(r, k, v, log_w, u, state):
        return wkv_chunked(r, k, v, log_w, u, state, chunk_size=chunk_size)

    return kernel


# ---------------------------------------------------------------------------------------------
# Accuracy of outputs and gradients


def _chunked_cases():
    # N = 16 for most cases: the float64 reference loop is the slow part of this file
    cases = []
    for dtype in (torch.float64, torch.float32):
        for T in (1, 7, 64, 200):
            for chunk in (16, 32, 64):
                for decay in ("finch", "eagle"):
                    cases.append((Case(2, T, 2, 16, decay, dtype), chunk))
    for decay in ("finch", "eagle"):
        cases += [(Case(1, 64, 2, 64, decay, torch.float32), chunk) for chunk in (16, 32, 64)]
        cases += [(Case(1, 1000, 2, 16, decay, torch.float32), chunk) for chunk in (32, 64)]
        cases += [(Case(2, 200, 2, 16, decay, torch.bfloat16), chunk) for chunk in (16, 64)]
        cases += [(Case(1, 64, 2, 64, decay, torch.bfloat16), 32)]
    return [pytest.param(case, chunk, id=f"{case.id}-c{chunk}") for case, chunk in cases]


@pytest.mark.parametrize("case, chunk_size", _chunked_cases())
def test_chunked_matches_reference(case: Case, chunk_size: int):
    actual = run_with_grads(chunked(chunk_size), make_inputs(case), case.dtype)
    assert actual["y"].dtype == case.dtype
    assert_matches(actual, reference(case), case.dtype, f"chunked c{chunk_size} {case.id}")


def _recurrent_cases():
    # float32 and bf16 only: the recurrence keeps its state in float32 whatever the input dtype
    cases = [Case(2, T, 2, 16, decay, torch.float32) for T in (1, 7, 64, 200) for decay in ("finch", "eagle")]
    cases += [Case(1, 64, 2, 64, decay, torch.float32) for decay in ("finch", "eagle")]
    cases += [Case(2, 200, 2, 16, decay, torch.bfloat16) for decay in ("finch", "eagle")]
    return [pytest.param(case, id=case.id) for case in cases]


@pytest.mark.parametrize("case", _recurrent_cases())
def test_recurrent_matches_reference(case: Case):
    actual = run_with_grads(wkv_recurrent, make_inputs(case), case.dtype)
    assert actual["y"].dtype == case.dtype
    assert actual["state"].dtype == torch.float32
    assert_matches(actual, reference(case), case.dtype, f"recurrent {case.id}")


def _extreme_cases():
    params = []
    for log_w in ("zero", "strong7", "strong10", "mixed"):
        for decay in ("finch", "eagle"):
            for dtype in (torch.float64, torch.float32):
                case = Case(2, 150, 2, 16, decay, dtype, log_w=log_w)
                params += [pytest.param(case, chunked(c), id=f"{case.id}-c{c}") for c in (16, 64)]
                if dtype == torch.float32:
                    params.append(pytest.param(case, wkv_recurrent, id=f"{case.id}-recurrent"))
    return params


@pytest.mark.parametrize("case, kernel", _extreme_cases())
def test_extreme_decay(case: Case, kernel):
    """log_w = 0, log_w = -e^7 and -e^10 everywhere, and a per-channel (finch: per-token) mix of
    0, -1e-4, -0.5, -e^7, -e^10, -1e30 and -inf: finite, and as accurate as ordinary decays."""
    actual = run_with_grads(kernel, make_inputs(case), case.dtype)
    assert_matches(actual, reference(case), case.dtype, f"extreme {case.id}")


@pytest.mark.parametrize("segment", [16, 512])
@pytest.mark.parametrize("case, kernel", [p for p in _extreme_cases() if "recurrent" not in p.id])
def test_extreme_decay_without_a_graph(case: Case, kernel, segment: int, monkeypatch):
    """The inference path (factors grown in place, one output buffer, its own segments: one chunk
    here, and the default) on the extreme decays, against the float64 loop."""
    monkeypatch.setattr(chunked_module, "INFERENCE_SEGMENT", segment)
    x = make_inputs(case)
    state_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    inputs = [x[n].to(case.dtype) for n in ("r", "k", "v", "log_w", "u")] + [x["state"].to(state_dtype)]
    kept = [t.clone() for t in inputs]
    with torch.no_grad():
        y, state = kernel(*inputs)
    expected = reference(case)
    atol, rtol = TOLERANCE[case.dtype]
    for name, actual in (("y", y), ("state", state)):
        assert torch.isfinite(actual).all(), f"{case.id}: non-finite {name}"
        abs_err, rel_err = errors(actual, expected[name])
        assert abs_err <= atol or rel_err <= rtol, f"{case.id} {name}: {abs_err:.3e} / {rel_err:.3e}"
    assert all(torch.equal(a, b) for a, b in zip(inputs, kept, strict=True)), "the inputs were changed"


def test_weak_decay_after_strong_keeps_precision():
    """A decay of e^-1e3 followed by weak ones: exponents summed from one side, not differenced.

    With running sums G differenced (G_i - G_j ~ -1e3 - 0.01 - (-1e3)), float32 would keep about
    one digit of the 0.01."""
    case = Case(1, 64, 1, 16, "finch", torch.float32)
    inputs = make_inputs(case)
    log_w = torch.full((1, 64, 1, 16), -0.01, dtype=torch.float64)
    log_w[:, ::9] = -1000.0
    inputs["log_w"] = log_w
    expected = run_with_grads(wkv_reference, inputs, torch.float64)
    for chunk_size in (16, 64):
        actual = run_with_grads(chunked(chunk_size), inputs, torch.float32)
        assert_matches(actual, expected, torch.float32, f"strong-then-weak c{chunk_size}")


# ---------------------------------------------------------------------------------------------
# Structure: state hand-over, batch rows, decay layouts, edge lengths


@pytest.mark.parametrize("split", [1, 16, 77, 199], ids=lambda s: f"split{s}")
@pytest.mark.parametrize("decay", ["finch", "eagle"])
def test_prefix_state_suffix_equals_one_pass(split: int, decay: str):
    case = Case(2, 200, 2, 16, decay, torch.float64)
    x = make_inputs(case)
    r, k, v, u, s0 = x["r"], x["k"], x["v"], x["u"], x["state"]
    lw = x["log_w"]

    def part(lo, hi):
        return lw[:, lo:hi] if decay == "finch" else lw

    y_full, s_full = wkv_chunked(r, k, v, lw, u, s0, chunk_size=32)
    y1, s1 = wkv_chunked(r[:, :split], k[:, :split], v[:, :split], part(0, split), u, s0, chunk_size=32)
    y2, s2 = wkv_chunked(r[:, split:], k[:, split:], v[:, split:], part(split, None), u, s1, chunk_size=32)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, s_full, rtol=1e-12, atol=1e-12)
    # the state is interchangeable between the kernels: a chunked prefix, then token by token
    y3, s3 = wkv_recurrent(
        r[:, split:].float(),
        k[:, split:].float(),
        v[:, split:].float(),
        part(split, None).float(),
        u.float(),
        s1.float(),
    )
    torch.testing.assert_close(y3.double(), y_full[:, split:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s3.double(), s_full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decay", ["finch", "eagle", "eagle-per-row"])
def test_batch_equals_rows_alone(decay: str):
    case = Case(3, 100, 2, 16, "finch" if decay == "finch" else "eagle", torch.float64)
    x = make_inputs(case)
    lw = x["log_w"]
    if decay == "eagle-per-row":  # a constant decay that differs between rows: [B, 1, H, N]
        lw = -torch.rand(3, 1, 2, 16, dtype=torch.float64) * 3
    y, s = wkv_chunked(x["r"], x["k"], x["v"], lw, x["u"], x["state"], chunk_size=32)
    for b in range(3):
        lw_b = lw[b : b + 1] if lw.dim() == 4 else lw
        y_b, s_b = wkv_chunked(
            x["r"][b : b + 1],
            x["k"][b : b + 1],
            x["v"][b : b + 1],
            lw_b,
            x["u"],
            x["state"][b : b + 1],
            chunk_size=32,
        )
        torch.testing.assert_close(y[b : b + 1], y_b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s[b : b + 1], s_b, rtol=1e-12, atol=1e-12)


def test_constant_decay_path_equals_per_token_path():
    """Eagle's [H, N] decay (the broadcast fast path) against the same decay spelled out per token."""
    case = Case(2, 150, 2, 16, "eagle", torch.float32)
    x = make_inputs(case)
    args = [x[n].float() for n in ("r", "k", "v")]
    lw = x["log_w"].float()
    for shape in ((2, 16), (1, 1, 2, 16), (2, 1, 2, 16)):
        y_const, s_const = wkv_chunked(*args, lw.expand(shape), x["u"].float(), x["state"].float())
        y_tok, s_tok = wkv_chunked(*args, lw.expand(2, 150, 2, 16), x["u"].float(), x["state"].float())
        torch.testing.assert_close(y_const, y_tok, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s_const, s_tok, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 12, 48, 128], ids=lambda c: f"c{c}")
def test_unusual_chunk_sizes(chunk_size: int):
    """Chunk sizes that are not powers of two end in larger pairwise blocks; all must agree."""
    case = Case(1, 100, 2, 16, "finch", torch.float64)
    actual = run_with_grads(chunked(chunk_size), make_inputs(case), torch.float64)
    assert_matches(actual, reference(case), torch.float64, f"chunked c{chunk_size}")


@pytest.mark.parametrize("kernel", [wkv_chunked, wkv_recurrent], ids=["chunked", "recurrent"])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
def test_empty_sequence(kernel, with_state: bool):
    r = torch.randn(2, 0, 3, 8, dtype=torch.bfloat16)
    s0 = torch.randn(2, 3, 8, 8) if with_state else None
    y, s = kernel(r, r, r, -torch.ones(3, 8), torch.zeros(3, 8), s0)
    assert y.shape == (2, 0, 3, 8) and y.dtype == torch.bfloat16
    assert s.shape == (2, 3, 8, 8) and s.dtype == torch.float32
    torch.testing.assert_close(s, s0 if with_state else torch.zeros(2, 3, 8, 8))


def test_state_defaults_to_zeros():
    case = Case(1, 40, 2, 16, "finch", torch.float64)
    x = make_inputs(case)
    args = [x[n] for n in ("r", "k", "v", "log_w", "u")]
    y0, s0 = wkv_chunked(*args)
    y1, s1 = wkv_chunked(*args, torch.zeros(1, 2, 16, 16, dtype=torch.float64))
    torch.testing.assert_close(y0, y1, rtol=0, atol=0)
    torch.testing.assert_close(s0, s1, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_NAME.get)
def test_output_dtypes(dtype: torch.dtype):
    r = torch.randn(1, 20, 2, 8).to(dtype)
    y, s = wkv_chunked(r, r, r, -torch.ones(2, 8), torch.zeros(2, 8), torch.zeros(1, 2, 8, 8), chunk_size=8)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("segment", [32, 128])
@pytest.mark.parametrize("decay", ["finch", "eagle"])
def test_no_grad_path_matches(decay: str, segment: int, monkeypatch):
    """Under no_grad the kernel runs segment by segment with in-place shortcuts: same values, and
    no graph."""
    monkeypatch.setattr(chunked_module, "RECOMPUTE_SEGMENT", segment)
    monkeypatch.setattr(chunked_module, "INFERENCE_SEGMENT", segment)
    x = make_inputs(Case(2, 100, 2, 16, decay, torch.float64))
    leaves = [x[n].clone().requires_grad_() for n in ("r", "k", "v", "log_w", "u", "state")]
    y, s = wkv_chunked(*leaves, chunk_size=32)
    with torch.no_grad():
        y0, s0 = wkv_chunked(*leaves, chunk_size=32)
    assert y0.grad_fn is None and s0.grad_fn is None
    torch.testing.assert_close(y0, y.detach(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(s0, s.detach(), rtol=1e-13, atol=1e-13)


def _saved_bytes(T: int, recompute: bool, H: int = 2, N: int = 16) -> tuple[int, int]:
    """(bytes autograd keeps for backward, bytes of r, k, v and log_w) for one Finch call."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = make_inputs(Case(1, T, H, N, "finch", torch.float32))
    leaves = [x[n].float().requires_grad_() for n in ("r", "k", "v", "log_w", "u")]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        wkv_chunked(*leaves, chunk_size=32, recompute=recompute)
    return total, sum(t.numel() * t.element_size() for t in leaves[:4])


def test_backward_memory_is_linear_in_T():
    """Plain autograd: the tensors kept for backward grow linearly with T (no per-token full-size
    slices)."""
    small, large = _saved_bytes(512, False)[0], _saved_bytes(2048, False)[0]
    assert large <= 4.4 * small, f"saved for backward: {small} bytes at T=512, {large} at T=2048"


@pytest.mark.parametrize("T", [512, 4096])
def test_recompute_keeps_only_inputs_and_segment_states(T: int, monkeypatch):
    """With recompute (the default) backward keeps r, k, v, log_w, u and one N x N state per head
    per segment: nothing that grows with the chunk's intermediates."""
    monkeypatch.setattr(chunked_module, "RECOMPUTE_ABOVE", 0)
    H, N = 4, 64
    saved, inputs = _saved_bytes(T, True, H, N)
    segments = -(-T // chunked_module.RECOMPUTE_SEGMENT)
    bound = inputs + H * N * 4 + segments * H * N * N * 4
    assert saved <= bound, f"T={T}: kept {saved} bytes for backward, expected at most {bound}"
    plain, _ = _saved_bytes(T, False, H, N)
    assert saved * 4 < plain, f"T={T}: recompute keeps {saved} bytes, plain autograd {plain}"


def test_recompute_starts_above_its_threshold():
    """Up to RECOMPUTE_ABOVE tokens backward keeps what plain autograd keeps; beyond, far less."""
    limit = chunked_module.RECOMPUTE_ABOVE
    assert _saved_bytes(limit, True)[0] == _saved_bytes(limit, False)[0]
    assert 4 * _saved_bytes(2 * limit, True)[0] < _saved_bytes(2 * limit, False)[0]


def _recompute_cases():
    cases = []
    for decay in ("finch", "eagle"):
        for dtype in (torch.float64, torch.float32):
            cases += [Case(2, 200, 2, 16, decay, dtype), Case(1, 1000, 2, 16, decay, dtype)]
        cases.append(Case(2, 150, 2, 16, decay, torch.float64, log_w="mixed"))
        cases.append(Case(2, 200, 2, 16, decay, torch.bfloat16))
    return [pytest.param(case, id=case.id) for case in cases]


@pytest.mark.parametrize("segment", [16, 48, 128])
@pytest.mark.parametrize("case", _recompute_cases())
def test_recompute_and_plain_autograd_match_reference(case: Case, segment: int, monkeypatch):
    """Both backward strategies against the float64 loop, with segments of one chunk, of three
    chunks (the last one partial) and the default; the sequence tail past whole chunks included."""
    monkeypatch.setattr(chunked_module, "RECOMPUTE_SEGMENT", segment)
    monkeypatch.setattr(chunked_module, "RECOMPUTE_ABOVE", 0)
    expected = reference(case)
    for recompute in (True, False):

        def kernel(r, k, v, log_w, u, state, recompute=recompute):
            return wkv_chunked(r, k, v, log_w, u, state, chunk_size=16, recompute=recompute)

        actual = run_with_grads(kernel, make_inputs(case), case.dtype)
        assert_matches(actual, expected, case.dtype, f"recompute={recompute} segment={segment} {case.id}")


@pytest.mark.parametrize("decay", ["finch", "eagle"])
def test_recompute_gradcheck(decay: str, monkeypatch):
    """torch's finite-difference check of the recomputing backward, every input at once, over
    several segments."""
    monkeypatch.setattr(chunked_module, "RECOMPUTE_SEGMENT", 8)
    monkeypatch.setattr(chunked_module, "RECOMPUTE_ABOVE", 0)
    x = make_inputs(Case(1, 37, 2, 4, decay, torch.float64))
    leaves = [x[n].clone().requires_grad_() for n in ("r", "k", "v", "log_w", "u", "state")]

    def f(*args):
        return wkv_chunked(*args, chunk_size=4)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("only", ["r", "log_w", "state"])
def test_recompute_with_one_input_requiring_grad(only: str, monkeypatch):
    """Only one leaf needs a gradient (say, tuning the initial state of a frozen model): it gets
    the right one, and the others get none."""
    monkeypatch.setattr(chunked_module, "RECOMPUTE_SEGMENT", 16)
    monkeypatch.setattr(chunked_module, "RECOMPUTE_ABOVE", 0)
    case = Case(2, 100, 2, 16, "finch", torch.float64)
    x = make_inputs(case)
    names = ("r", "k", "v", "log_w", "u", "state")
    leaves = [x[n].clone().requires_grad_(n == only) for n in names]
    y, state = wkv_chunked(*leaves, chunk_size=16)
    ((y * x["dy"]).sum() + (state * x["dstate"]).sum()).backward()
    expected = reference(case)["d" + only if only != "state" else "dstate0"]
    torch.testing.assert_close(leaves[names.index(only)].grad, expected, rtol=1e-12, atol=1e-12)
    assert all(leaf.grad is None for n, leaf in zip(names, leaves, strict=True) if n != only)


@pytest.mark.parametrize(
    "T, kernel",
    [(100, "chunked"), (600, "chunked"), (20, "recurrent")],
    ids=["chunked-plain", "chunked-recompute", "recurrent"],
)
def test_autocast_does_not_lower_the_kernels_precision(T: int, kernel: str):
    """Under bf16 autocast (as `eaglefinch train --precision bf16` runs) the kernels still compute
    in float32: the same output and gradients as without autocast (chunked: in both backward paths)."""
    x = make_inputs(Case(1, T, 2, 16, "finch", torch.float32))
    run = chunked(32) if kernel == "chunked" else wkv_recurrent
    results = []
    for amp in (False, True):
        leaves = [x[n].float().requires_grad_() for n in ("r", "k", "v", "log_w", "u", "state")]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):  # the forward only, as torch advises
            y, state = run(*leaves)
        ((y * x["dy"].float()).sum() + (state * x["dstate"].float()).sum()).backward()
        results.append([y.detach(), state.detach(), *(leaf.grad for leaf in leaves)])
    assert results[1][0].dtype == torch.float32
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_rejects_bad_shapes():
    r = torch.randn(1, 10, 2, 8)
    with pytest.raises(ValueError, match="share a shape"):
        wkv_chunked(r, r[:, :5], r, -torch.ones(2, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="u must be"):
        wkv_chunked(r, r, r, -torch.ones(2, 8), torch.zeros(8))
    with pytest.raises(ValueError, match="state must be"):
        wkv_chunked(r, r, r, -torch.ones(2, 8), torch.zeros(2, 8), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        wkv_chunked(r, r, r, -torch.ones(2, 8), torch.zeros(2, 8), chunk_size=0)


def test_dispatcher_modes_agree():
    x = make_inputs(Case(1, 50, 2, 16, "finch", torch.float32))
    args = [x[n].float() for n in ("r", "k", "v", "log_w", "u", "state")]
    y_c, s_c = wkv(*args, mode="chunked", chunk_size=16)
    y_r, s_r = wkv(*args, mode="recurrent")
    y_a, s_a = wkv(*args)
    torch.testing.assert_close(y_c, y_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_c, s_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y_a, y_c, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown WKV mode"):
        wkv(*args, mode="fast")


def test_pairwise_block_setting_does_not_change_results(monkeypatch):
    """The split between pairwise blocks and factored halves is a speed knob only."""
    case = Case(1, 130, 2, 16, "finch", torch.float64, log_w="mixed")
    expected = reference(case)
    for block in (1, 2, 8, 64):
        monkeypatch.setattr(chunked_module, "PAIRWISE_BLOCK", block)
        actual = run_with_grads(chunked(64), make_inputs(case), torch.float64)
        assert_matches(actual, expected, torch.float64, f"PAIRWISE_BLOCK={block}")
