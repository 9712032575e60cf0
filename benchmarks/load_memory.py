"""Peak memory of loading a large checkpoint, against the file's size.

Usage: python benchmarks/load_memory.py [--preset eagle-7b] [--dtype bf16] [--workdir DIR]

Writes a synthetic official-format checkpoint of the preset's shapes (values are zeros: the
size, not the content, matters here), then loads it in a fresh process with ``eaglefinch.load``,
reads every weight once, and records the process's peak resident memory (ru_maxrss) as a
multiple of the file size. Building the file needs almost no memory: each tensor is backed by a
sparse scratch file through ``torch.from_file``, so ``torch.save`` streams it to disk.
Result: benchmarks/results/load_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from eaglefinch import RWKV, RWKVConfig  # noqa: E402
from eaglefinch.checkpoint import parse_dtype  # noqa: E402

CHILD = r"""
import json, resource, sys, time, torch
import eaglefinch
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
baseline = rss()  # the interpreter, torch and eaglefinch before any weight
start = time.perf_counter()
model = eaglefinch.load(sys.argv[1])
loaded = time.perf_counter() - start
# read every page once, a slice at a time so the reading itself allocates little
checksum = sum(
    float(chunk.sum(dtype=torch.float32))
    for p in model.parameters()
    for chunk in p.detach().reshape(-1).split(1 << 20)
)
touched = time.perf_counter() - start
print(json.dumps({"load_s": loaded, "load_and_read_s": touched, "checksum": checksum,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "baseline_rss_bytes": baseline,
                  "parameters": model.num_parameters()}))
"""


def write_synthetic(config: RWKVConfig, dtype: torch.dtype, path: Path, scratch: Path) -> int:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in RWKV(config, init=False).state_dict().items()}
    tensors = {}
    for i, (name, shape) in enumerate(shapes.items()):
        numel = int(torch.Size(shape).numel())
        backing = scratch / f"t{i}"
        with open(backing, "wb") as f:  # sparse: reads as zeros, takes no disk
            f.truncate(numel * torch.finfo(dtype).bits // 8)
        tensors[name] = torch.from_file(str(backing), shared=False, size=numel, dtype=dtype).view(shape)
    torch.save(tensors, path)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="eagle-7b")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--workdir", default=None, help="where the synthetic file goes (needs its size free)")
    args = parser.parse_args()
    config, dtype = RWKVConfig.preset(args.preset), parse_dtype(args.dtype)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "scratch").mkdir()
        start = time.perf_counter()
        size = write_synthetic(config, dtype, tmp / "model.pth", tmp / "scratch")
        write_s = time.perf_counter() - start
        for f in (tmp / "scratch").iterdir():
            f.unlink()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp / "model.pth")], capture_output=True, text=True, check=True
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
    result = {
        "preset": args.preset,
        "dtype": args.dtype,
        "file_bytes": size,
        "write_s": write_s,
        **child,
        "peak_rss_over_file_size": child["peak_rss_bytes"] / size,
        "peak_rss_above_baseline_over_file_size": (child["peak_rss_bytes"] - child["baseline_rss_bytes"])
        / size,
        "note": "peak RSS counts the memory-mapped file pages read (the floor is 1.0x the file); "
        "the baseline is "
        "the process after importing torch and eaglefinch, before loading",
    }
    path = write_json(f"load_memory_{args.preset}_{args.dtype}", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
