"""Triton kernels for CUDA tensors (and for CPU tensors under ``TRITON_INTERPRET=1``).

Importing this package needs ``triton`` (``pip install 'eaglefinch[gpu]'``); ``eaglefinch.ops``
imports it only when a kernel from it is used.
"""

from eaglefinch.ops.triton.wkv_chunked import WKVChunkedTriton
from eaglefinch.ops.triton.wkv_step import wkv_step_triton

__all__ = ["WKVChunkedTriton", "wkv_step_triton"]
