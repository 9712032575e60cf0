"""eaglefinch: RWKV Eagle (RWKV-5.2) and Finch (RWKV-6) in plain PyTorch."""

from eaglefinch.checkpoint import load, save
from eaglefinch.config import RWKVConfig
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState

__all__ = ["RWKV", "RWKVConfig", "RWKVState", "load", "save"]
