"""Checkpoints written for other runtimes: GGUF files for llama.cpp."""

from eaglefinch.export.gguf import TYPES, export_checkpoint, export_gguf, gguf_tensors

__all__ = ["TYPES", "export_checkpoint", "export_gguf", "gguf_tensors"]
