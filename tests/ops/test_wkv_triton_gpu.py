"""The compiled Triton kernels on a CUDA device: model-sized shapes against the float64 reference,
bf16 with tensor-core products, and the kernels' dispatch for CUDA tensors. Skipped without a GPU
(the kernels' logic is covered on CPU by test_wkv_triton.py under Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch
from wkv_cases import Case, assert_matches, make_inputs, reference, run_with_grads

pytest.importorskip("triton", reason="the Triton kernels need triton: pip install 'eaglefinch[gpu]'")
pytestmark = [pytest.mark.gpu, pytest.mark.triton]


def _on_cuda(kernel):
    def run(*args):
        y, state = kernel(*(a.cuda() if a is not None else None for a in args))
        return y.cpu(), state.cpu()

    return run


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("decay", ["finch", "eagle"])
@pytest.mark.parametrize("N", [64, 128])
def test_compiled_kernels_match_reference(N: int, decay: str, dtype: torch.dtype):
    from eaglefinch.ops.triton import wkv_chunked_triton

    case = Case(2, 1000, 4, N, decay, dtype)  # 15 whole chunks and a partial one
    actual = run_with_grads(_on_cuda(wkv_chunked_triton), make_inputs(case), dtype)
    assert_matches(actual, reference(case), dtype, f"compiled {case.id}")


@pytest.mark.parametrize("log_w", ["zero", "strong7", "mixed"])
def test_compiled_kernels_extreme_decays_stay_finite(log_w: str):
    from eaglefinch.ops.triton import wkv_chunked_triton

    case = Case(1, 300, 2, 64, "finch", torch.bfloat16, log_w=log_w)
    actual = run_with_grads(_on_cuda(wkv_chunked_triton), make_inputs(case), torch.bfloat16)
    assert all(torch.isfinite(t).all() for t in actual.values())


def test_cuda_tensors_dispatch_to_triton_by_default(monkeypatch):
    import eaglefinch.ops.triton as triton_ops
    from eaglefinch.ops import wkv, wkv_chunked

    monkeypatch.delenv("EAGLEFINCH_KERNEL", raising=False)
    calls, real = [], triton_ops.wkv_triton
    monkeypatch.setattr(triton_ops, "wkv_triton", lambda *a: calls.append(1) or real(*a))
    r, k, v = (torch.randn(2, 200, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    log_w = -torch.exp(torch.randn(2, 200, 4, 64, device="cuda", dtype=torch.bfloat16))
    u = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    y, state = wkv(r, k, v, log_w, u)
    assert calls == [1]
    y_torch, state_torch = wkv_chunked(r.float(), k.float(), v.float(), log_w.float(), u.float())
    scale = y_torch.abs().max()
    assert (y.float() - y_torch).abs().max() <= 2e-2 * scale
    assert (state - state_torch).abs().max() <= 2e-2 * state_torch.abs().max()


@pytest.mark.parametrize("version", ["5.2", "6.0"], ids=["eagle", "finch"])
def test_bf16_model_training_step_matches_torch_path(version: str, monkeypatch):
    """A bf16 model's loss and gradients, Triton against the torch chunked form, on the device."""
    from eaglefinch import RWKV, RWKVConfig
    from eaglefinch.testing import random_state_dict

    config = RWKVConfig(version, n_layer=4, n_embd=512, vocab_size=1000)
    model = RWKV(config, init=False)
    model.load_state_dict(random_state_dict(config, seed=3))
    model = model.cuda().bfloat16()
    tokens = torch.randint(0, 1000, (2, 600), device="cuda")
    results = {}
    for kernel in ("triton", "torch"):
        monkeypatch.setenv("EAGLEFINCH_KERNEL", kernel)
        model.zero_grad()
        loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        results[kernel] = (loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()})
    assert abs(results["triton"][0] - results["torch"][0]) <= 1e-2 * abs(results["torch"][0])
    for name, g in results["triton"][1].items():
        ref = results["torch"][1][name]
        assert (g - ref).norm() <= 5e-2 * ref.norm().clamp_min(1e-12), name
