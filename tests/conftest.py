"""Shared test set-up: seeds, the `gpu` marker, NaN-filled `torch.empty` (catches uninitialised reads),
and Triton's interpreter where there is no CUDA device."""

from __future__ import annotations

import os

import pytest
import torch
import torch.utils._device

# Without a CUDA device the Triton kernels' tests run in Triton's interpreter. TRITON_INTERPRET is
# read when a kernel is defined, so it is set before any test imports eaglefinch.ops.triton; CPU
# tensors still run the torch kernels unless EAGLEFINCH_KERNEL=triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_original_empty = torch.empty
# `with torch.device(...)` recognises factory functions by identity, from a set built once; build it
# now, before the patch below, so that meta-device construction keeps working under the patch.
torch.utils._device._device_constructors()


def _nan_empty(*args, **kwargs):
    tensor = _original_empty(*args, **kwargs)
    if tensor.is_floating_point() and tensor.device.type != "meta":
        tensor.fill_(float("nan"))
    return tensor


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))


@pytest.fixture(autouse=True)
def _seed_and_nan_empty(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(torch, "empty", _nan_empty)
    yield
