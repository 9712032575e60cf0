"""Prefill throughput (one call over a T-token prompt) against the official `rwkv` package.

Usage: python benchmarks/prefill_speed.py [--presets finch-l12-d768 eagle-l12-d768] [--tokens 512]

Both libraries run the same random official-format checkpoint in the same process, in fp32 and
bf16; the package runs with its defaults (TorchScript on). Result: benchmarks/results/prefill_speed.json
and .png (tokens/s per library and dtype).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, ensure_malloc_env, write_json  # noqa: E402

from eaglefinch import RWKVConfig, load  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402


def measure(preset: str, T: int, repeat: int) -> list[dict]:
    from rwkv.model import RWKV as OfficialRWKV

    config = RWKVConfig.preset(preset)
    tokens = torch.randint(0, config.vocab_size, (T,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save(random_state_dict(config, seed=0), path)
        for dtype in ("fp32", "bf16"):
            official = OfficialRWKV(model=str(path), strategy=f"cpu {dtype}", verbose=False)
            seconds = best_time(functools.partial(official.forward, tokens, None), repeat=repeat)
            rows.append(
                {
                    "preset": preset,
                    "library": "rwkv",
                    "dtype": dtype,
                    "T": T,
                    "seconds": seconds,
                    "tokens_per_s": T / seconds,
                }
            )
            del official
            ours = load(path, dtype=dtype)
            batch = torch.tensor([tokens])

            def run(model=ours, batch=batch):
                with torch.inference_mode():
                    model(batch, last_only=True)

            seconds = best_time(run, repeat=repeat)
            rows.append(
                {
                    "preset": preset,
                    "library": "eaglefinch",
                    "dtype": dtype,
                    "T": T,
                    "seconds": seconds,
                    "tokens_per_s": T / seconds,
                }
            )
            del ours
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({r["preset"] for r in rows})
    fig, axes = plt.subplots(1, len(presets), figsize=(5 * len(presets), 4), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        labels, values = [], []
        for r in rows:
            if r["preset"] == preset:
                labels.append(f"{r['library']}\n{r['dtype']}")
                values.append(r["tokens_per_s"])
        ax.bar(labels, values, color=["#999999", "#2a7ab9"] * (len(values) // 2))
        ax.set_title(f"{preset}: prefill of {rows[0]['T']} tokens")
        ax.set_ylabel("tokens / s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ensure_malloc_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["finch-l12-d768", "eagle-l12-d768"])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = [row for preset in args.presets for row in measure(preset, args.tokens, args.repeat)]
    ratios = {}
    for preset in args.presets:
        best_theirs = max(r["tokens_per_s"] for r in rows if r["preset"] == preset and r["library"] == "rwkv")
        for r in rows:
            if r["preset"] == preset and r["library"] == "eaglefinch":
                ratios[f"{preset} {r['dtype']} / rwkv best"] = r["tokens_per_s"] / best_theirs
    path = write_json("prefill_speed", {"rows": rows, "ratio_to_rwkv_best_strategy": ratios})
    plot(rows, path.with_suffix(".png"))
    for r in rows:
        print(f"{r['preset']:16s} {r['library']:10s} {r['dtype']}  {r['tokens_per_s']:8.1f} tok/s")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")


if __name__ == "__main__":
    main()
