"""Kernels benchmark: each contender runs and reports, the two Finch backward strategies agree,
skip estimates and goal ratios against hand-computed values, one point through a subprocess."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from eaglefinch.experiments import kernels

TINY = {"batch": 1, "n_head": 2, "head_size": 8, "dtype": "float32"}


@pytest.mark.parametrize("mode", kernels.MODES)
@pytest.mark.parametrize("contender", kernels.CONTENDERS)
def test_measure_each_contender(contender, mode):
    if contender == "mamba":
        pytest.importorskip("transformers")
    if contender == "fla-rwkv6" and not torch.cuda.is_available():
        pytest.skip("fla's chunk_rwkv6 needs a CUDA device")
    if contender.endswith("-triton"):
        pytest.importorskip("triton", reason="the Triton kernels need triton")  # interpreted on CPU
    point = kernels.measure(contender, 96, mode, TINY, "cpu", repeats=1)
    assert point["seconds"] > 0 and point["peak_bytes"] >= 0
    assert point["input_bytes"] > 0
    if contender == "attention":
        assert point["sdpa_backend"]


def test_finch_contenders_differ_only_in_what_backward_keeps():
    """``finch`` (recomputing backward) and ``finch-autograd`` compute the same values and gradients
    from the same inputs; the recomputing one keeps less for backward."""
    cfg = {"batch": 1, "n_head": 2, "head_size": 8, "dtype": "float64"}
    results = {}
    for contender in ("finch", "finch-autograd"):
        call, inputs, _ = kernels.make_point(contender, 600, cfg, "cpu", torch.Generator().manual_seed(3))
        kept = 0

        def pack(t):
            nonlocal kept
            kept += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = call()
        results[contender] = (y, torch.autograd.grad(y.square().sum(), inputs), kept)
    (y1, g1, kept1), (y2, g2, kept2) = results["finch"], results["finch-autograd"]
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert kept1 * 3 < kept2, (kept1, kept2)


def test_skip_reason_extrapolates_time():
    prev = {"T": 1024, "seconds_first_call": 10.0, "peak_bytes": 1}
    # attention grows as T^2: 40 s at 2048; the recurrent kernels as T: 20 s
    assert "40 s" in kernels.skip_reason("attention", prev, 2048, max_seconds=30)
    assert kernels.skip_reason("finch", prev, 2048, max_seconds=30) is None
    assert kernels.skip_reason("finch", None, 512, max_seconds=30) is None
    assert kernels.skip_reason("finch", {"error": "x"}, 2048, max_seconds=30)


def test_goals_ratios_hand_computed():
    def pt(c, T, s, b):
        return {"contender": c, "T": T, "mode": "fwdbwd", "seconds": s, "peak_bytes": b}

    points = [
        pt("finch", 4096, 1.0, 300),
        pt("attention", 4096, 2.0, 100),
        pt("mamba", 4096, 4.0, 600),
        pt("finch", 1024, 1.0, 1),
        {"contender": "attention", "T": 8192, "mode": "fwdbwd", "skipped": "slow"},
    ]
    (row,) = kernels.goals(points)
    assert row["kernel"] == "finch"
    assert row["memory_over_attention"] == 3.0 and row["less_memory_than_attention"] is False
    assert row["memory_over_mamba"] == 0.5 and row["less_memory_than_mamba"] is True
    assert row["time_over_attention"] == 0.5 and row["faster_than_attention"] is True


def test_goals_of_the_triton_kernel_hand_computed():
    def pt(c, T, s, b):
        return {"contender": c, "T": T, "mode": "fwdbwd", "seconds": s, "peak_bytes": b}

    points = [
        pt("finch-triton", 2048, 0.5, 100),
        pt("fla-rwkv6", 2048, 0.6, 100),
        pt("finch", 2048, 3.0, 400),
    ]
    rows = {r["kernel"]: r for r in kernels.goals(points)}
    row = rows["finch-triton"]
    assert row["time_over_fla-rwkv6"] == pytest.approx(0.5 / 0.6) and row["memory_over_fla-rwkv6"] == 1.0
    assert row["at_most_fla_time_and_memory"] is True
    assert row["speedup_over_torch_chunked"] == 6.0 and row["at_least_5x_torch_chunked"] is True
    points[2] = pt("finch", 2048, 2.0, 400)
    row = {r["kernel"]: r for r in kernels.goals(points)}["finch-triton"]
    assert row["speedup_over_torch_chunked"] == 4.0 and row["at_least_5x_torch_chunked"] is False


def test_sweep_through_subprocesses(tmp_path):
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    args = parser.parse_args(
        [
            "--contenders",
            "finch,attention",
            "--seq-lens",
            "64",
            "--modes",
            "fwdbwd",
            "--n-head",
            "2",
            "--head-size",
            "8",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert kernels.run(args) == 0
    result = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert [p["contender"] for p in result["points"]] == ["finch", "attention"]
    assert all("error" not in p for p in result["points"]), result["points"]
    assert (tmp_path / "kernels_time_cpu.png").exists() and (tmp_path / "kernels_memory_cpu.png").exists()


def test_bad_contender_is_one_clear_error(tmp_path):
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    with pytest.raises(kernels.ConfigError):
        kernels.run(parser.parse_args(["--contenders", "bogus", "--out", str(tmp_path)]))
