"""Kernels benchmark: each contender runs and reports, segment recompute equals the plain kernel,
skip estimates and goal ratios against hand-computed values, one point through a subprocess."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from eaglefinch.experiments import kernels
from eaglefinch.ops.wkv_chunked import wkv_chunked

TINY = {"batch": 1, "n_head": 2, "head_size": 8, "dtype": "float32"}


@pytest.mark.parametrize("mode", kernels.MODES)
@pytest.mark.parametrize("contender", kernels.CONTENDERS)
def test_measure_each_contender(contender, mode):
    if contender == "mamba":
        pytest.importorskip("transformers")
    point = kernels.measure(contender, 96, mode, TINY, "cpu", repeats=1)
    assert point["seconds"] > 0 and point["peak_bytes"] >= 0
    assert point["input_bytes"] > 0
    if contender == "attention":
        assert point["sdpa_backend"]


def test_segment_recompute_equals_plain_kernel(monkeypatch):
    monkeypatch.setattr(kernels, "SEGMENT", 16)
    g = torch.Generator().manual_seed(1)
    shape = (2, 45, 2, 4)
    r, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = (r, k, v, w, u)
    y1 = kernels._segmented_wkv(r, k, v, -torch.exp(w), u)
    g1 = torch.autograd.grad(y1.square().sum(), inputs)
    y2, _ = wkv_chunked(r, k, v, -torch.exp(w), u)
    g2 = torch.autograd.grad(y2.square().sum(), inputs)
    torch.testing.assert_close(y1, y2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


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
    assert row["memory_finch_over_attention"] == 3.0 and row["less_memory_than_attention"] is False
    assert row["memory_finch_over_mamba"] == 0.5 and row["less_memory_than_mamba"] is True
    assert row["time_finch_over_attention"] == 0.5 and row["faster_than_attention"] is True


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
