"""glibc's allocator, set for a long-running inference process.

By default glibc returns a freed block of more than 128 KiB (raised dynamically up to 32 MiB) to
the system at once, so the next tensor of that size comes back as fresh pages, each one a page
fault on first touch. A decoding loop allocates the same few-MiB tensors (logits, probabilities,
their sorted and cumulative forms) every step: in a server process that has loaded a model, the
batch-16 sampling step was dominated by those faults. ``keep_freed_memory`` keeps blocks of up to
32 MiB in the process for reuse and trims the heap only above 1 GiB of free space: memory stays
bounded by the largest working set, and steady-state steps stop faulting.

The environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, where set, win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (HEAP_MAX / 2 on 64-bit)
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Apply the settings above where glibc is the allocator; return whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied &= mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        applied &= mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return bool(applied)
