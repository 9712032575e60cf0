"""The allocator settings of the decoding commands: applied on glibc, the environment respected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eaglefinch import allocator

SCRIPT = """
import ctypes, ctypes.util
from eaglefinch.allocator import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
print(keep_freed_memory())
# after the settings, a freed 16 MiB block is reused rather than unmapped: a second allocation of
# that size returns the same address (with glibc's defaults at start-up both come from mmap, and
# the first free unmaps it)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
a = libc.malloc(16 * 2**20); libc.free(a); b = libc.malloc(16 * 2**20)
print(a == b)
"""


def _glibc() -> bool:
    import platform

    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the settings are glibc's (mallopt)")
def test_settings_apply_on_glibc_and_freed_blocks_are_reused():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_no_glibc_means_no_change(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
