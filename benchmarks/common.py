"""Shared helpers for benchmark scripts: an environment stamp and atomic JSON output.

Every result file records the machine, the library versions, the git commit and the allocator
settings, because these machines are noisy and numbers mean little without them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eaglefinch.experiments import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
# glibc returns freed memory to the OS between calls, making identical calls differ up to 5x;
# these limits keep timings within ~30% (see SPEC, "Measuring on these machines").
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def ensure_malloc_env() -> None:
    """Re-execute the running script with MALLOC_ENV set, unless it is set already."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def cpu_flags() -> list[str]:
    """The vector and matrix instruction sets the CPU reports (``lscpu``'s flags, the ones that matter)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))
    except OSError:
        pass
    return []


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    import numpy
    import torch

    env = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "commit": git_commit(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import rwkv

        env["rwkv_package"] = getattr(rwkv, "__version__", None) or _dist_version("rwkv")
    except ImportError:
        env["rwkv_package"] = None
    return env


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_json(name: str, data: dict) -> Path:
    """Write ``{"environment": ..., **data}`` to benchmarks/results/<name>.json atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"environment": environment(), **data}
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def wall_times(fn, repeat: int, warmup: int) -> list[float]:
    """Wall times of ``repeat`` runs of ``fn()`` after ``warmup`` untimed ones, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs, in seconds."""
    return min(wall_times(fn, repeat, warmup))


def median_time(fn, repeat: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, in seconds."""
    return statistics.median(wall_times(fn, repeat, warmup))
