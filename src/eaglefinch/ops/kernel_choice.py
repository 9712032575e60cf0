"""Which implementation runs WKV: the plain-torch forms or the Triton kernels.

``EAGLEFINCH_KERNEL`` chooses: ``auto`` (the default: Triton for CUDA tensors when ``triton``
imports, torch otherwise), ``torch`` (always the torch forms) or ``triton`` (Triton for CUDA
tensors, and for CPU tensors under ``TRITON_INTERPRET=1``, Triton's interpreter, which the tests
use). Inputs the Triton kernels do not take (float64, head sizes over ``MAX_HEAD_SIZE``) run the
torch forms, with one warning.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from eaglefinch.errors import ConfigError

CHOICES = ("auto", "torch", "triton")
MAX_HEAD_SIZE = 128  # the output kernel keeps an N x N state tile in registers
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_choice() -> str:
    choice = os.environ.get("EAGLEFINCH_KERNEL", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(
            f"EAGLEFINCH_KERNEL={choice!r} is not a kernel choice: use one of {', '.join(CHOICES)}"
        )
    return choice


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=5)  # past use_triton/triton_runs: the caller's caller


def use_triton(r: torch.Tensor) -> bool:
    """Whether WKV on tensors like ``r`` ([B, T, H, N] or [B, H, N]) runs the Triton kernels."""
    return triton_runs(r.device, r.dtype, r.shape[-1])


def triton_runs(device: torch.device, dtype: torch.dtype, head_size: int) -> bool:
    """Whether WKV on ``dtype`` tensors of heads of ``head_size`` on ``device`` runs the Triton kernels."""
    choice = kernel_choice()
    if choice == "torch":
        return False
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (choice == "triton" and interpreted):
        if choice == "triton" and not interpreted:
            _warn_once(
                "EAGLEFINCH_KERNEL=triton: CPU tensors run the torch kernels "
                "(Triton needs a CUDA device, or TRITON_INTERPRET=1 for its interpreter)"
            )
        return False
    if not triton_available():
        if choice == "triton":
            raise ConfigError("EAGLEFINCH_KERNEL=triton needs triton: pip install 'eaglefinch[gpu]'")
        return False
    if dtype not in TRITON_DTYPES or head_size > MAX_HEAD_SIZE:
        _warn_once(
            f"the Triton WKV kernels take float32/bf16/fp16 and head sizes up to {MAX_HEAD_SIZE}; "
            f"{dtype} with head size {head_size} runs the torch kernels"
        )
        return False
    return True
