"""eaglefinch: RWKV Eagle (RWKV-5.2) and Finch (RWKV-6) in plain PyTorch."""

from eaglefinch.checkpoint import load, save
from eaglefinch.config import RWKVConfig
from eaglefinch.generation import (
    Context,
    PrefixCache,
    SamplingConfig,
    generate,
    load_state,
    prefill,
    save_state,
    stream,
)
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState
from eaglefinch.tokenizer import WorldTokenizer

__all__ = [
    "Context",
    "PrefixCache",
    "RWKV",
    "RWKVConfig",
    "RWKVState",
    "SamplingConfig",
    "WorldTokenizer",
    "generate",
    "load",
    "load_state",
    "prefill",
    "save",
    "save_state",
    "stream",
]
