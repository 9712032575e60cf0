"""Triton's interpreter for the Triton kernels' tests when there is no CUDA device.

``TRITON_INTERPRET`` is read when a kernel is defined, so it is set here, before any test imports
``eaglefinch.ops.triton``; CPU tensors run the torch kernels unless ``EAGLEFINCH_KERNEL=triton``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
