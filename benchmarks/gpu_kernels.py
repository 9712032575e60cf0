"""GPU kernels: the Triton WKV kernels against the torch chunked form, fla's chunk_rwkv6, attention
(SDPA, FlashAttention backend) and Mamba, and a Finch-1.6B-shaped training step (paper Figures 6-7).

Usage (needs a CUDA device)::

    python benchmarks/gpu_kernels.py            # the whole sweep (about 10 minutes on an H100)
    python benchmarks/gpu_kernels.py --quick    # B=8, H*K=4096, T = 2048 and 8192 only

Kernel points: one layer's worth of bf16 input, ``eaglefinch.experiments.kernels.measure`` (time:
median of 3 calls after a warm-up call; memory: ``torch.cuda.max_memory_allocated`` during one
call above what was allocated before the inputs, so inputs, outputs, saved tensors and gradients
count). B in {1, 8}, H*K in {2048, 4096} with heads of 64, T from 512 to 16384, forward (no_grad)
and forward+backward (``y.sum()`` back to every input). Contenders: ``finch-triton`` and
``eagle-triton`` (ours, Triton), ``finch`` (ours, torch chunked), ``fla-rwkv6`` (fla's
``chunk_rwkv6`` where ``fla`` imports), ``attention`` and ``mamba`` (transformers' ``MambaMixer``,
with its projections, where transformers imports). Points run in this process, one after another;
a point that runs out of memory is recorded as such, and a series stops growing T once a point
exceeds ``--max-seconds``.

Training step: Finch-1.6B's shape (24 layers, d_model 2048, vocab 65536, random weights), bf16,
batch 1 x ``--train-ctx`` tokens, forward + backward of the mean cross-entropy with per-block
recompute, tokens/s with ``EAGLEFINCH_KERNEL=triton`` and ``EAGLEFINCH_KERNEL=torch``.

Writes ``benchmarks/results/gpu_kernels.json`` (environment, every point, the goals as measured
ratios: Triton forward+backward at or below fla's time and memory and >= 5x the torch chunked form
at every T >= 2048; Finch memory below attention's and Mamba's) and ``gpu_kernels.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, write_json  # noqa: E402

from eaglefinch.experiments import kernels  # noqa: E402

SHAPES = [(1, 32), (8, 32), (1, 64), (8, 64)]  # (B, H): H*K = 2048 and 4096 with heads of 64
SEQ_LENS = [512, 1024, 2048, 4096, 8192, 16384]


def available_contenders() -> tuple[list[str], dict[str, str]]:
    contenders, missing = [], {}
    for name in kernels.CUDA_CONTENDERS:
        if name.endswith("-triton") and importlib.util.find_spec("triton") is None:
            missing[name] = "triton is not installed (pip install 'eaglefinch[gpu]')"
        elif name == "fla-rwkv6" and importlib.util.find_spec("fla") is None:
            missing[name] = "fla is not installed (pip install fla-core)"
        elif name == "mamba" and importlib.util.find_spec("transformers") is None:
            missing[name] = "transformers is not installed"
        else:
            contenders.append(name)
    return contenders, missing


def sweep(
    contenders, shapes, seq_lens, modes, max_seconds: float, device: str = "cuda", head_size: int = 64
) -> list[dict]:
    points = []
    for B, H in shapes:
        cfg = {"batch": B, "n_head": H, "head_size": head_size, "dtype": "bfloat16"}
        for mode in modes:
            for contender in contenders:
                stop = None
                for T in seq_lens:
                    key = {"contender": contender, "T": T, "mode": mode, "batch": B, "d_model": H * head_size}
                    if stop:
                        points.append({**key, "skipped": stop})
                        continue
                    try:
                        point = {**kernels.measure(contender, T, mode, cfg, device, repeats=3), **key}
                        if point["seconds"] > max_seconds:
                            stop = f"the previous length took over {max_seconds:.0f} s"
                    except torch.OutOfMemoryError:
                        point, stop = (
                            {**key, "error": "out of memory"},
                            "the previous length ran out of memory",
                        )
                    except Exception as error:  # a peer's failure is recorded, not fatal to the sweep
                        point = {**key, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
                    if device == "cuda":
                        torch.cuda.empty_cache()
                    points.append(point)
                    shown = (
                        point.get("error")
                        or f"{point['seconds'] * 1e3:.2f} ms, {point['peak_bytes'] / 2**20:.0f} MiB"
                    )
                    print(f"B={B} D={H * 64} {mode:6s} {contender:13s} T={T:6d}: {shown}", flush=True)
    return points


def training_step(ctx: int, steps: int) -> dict:
    """Tokens/s of forward+backward on a Finch-1.6B-shaped bf16 model, Triton against torch WKV."""
    from eaglefinch import RWKV, RWKVConfig

    config = RWKVConfig.preset("finch-1.6b")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = RWKV(config).to(torch.bfloat16)
    model.set_grad_checkpointing(True)
    tokens = torch.randint(0, config.vocab_size, (1, ctx + 1), device="cuda")
    result = {"config": "finch-1.6b", "ctx": ctx, "batch": 1, "dtype": "bfloat16", "grad_checkpointing": True}
    for kernel in ("triton", "torch"):
        os.environ["EAGLEFINCH_KERNEL"] = kernel
        times = []
        torch.cuda.reset_peak_memory_stats()
        for step in range(steps + 1):  # the first step compiles and is not timed
            torch.cuda.synchronize()
            start = time.perf_counter()
            loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        seconds = sorted(times)[len(times) // 2]
        result[kernel] = {
            "seconds_per_step": seconds,
            "tokens_per_s": ctx / seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(f"training step finch-1.6b ctx {ctx} {kernel}: {ctx / seconds:.0f} tokens/s", flush=True)
    os.environ.pop("EAGLEFINCH_KERNEL", None)
    result["triton_speedup"] = result["torch"]["seconds_per_step"] / result["triton"]["seconds_per_step"]
    return result


def goals(points: list[dict]) -> list[dict]:
    rows = []
    for B, D in sorted({(p["batch"], p["d_model"]) for p in points}):
        for row in kernels.goals([p for p in points if (p["batch"], p["d_model"]) == (B, D)]):
            rows.append({"batch": B, "d_model": D, **row})
    return rows


def plot(path: Path, points: list[dict], shapes, title: str, head_size: int = 64) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(shapes), figsize=(4.2 * len(shapes), 7), squeeze=False)
    for col, (B, H) in enumerate(shapes):
        for contender in kernels.CONTENDERS:
            pts = sorted(
                (p["T"], p["seconds"] * 1e3, p["peak_bytes"] / 2**20)
                for p in points
                if p["contender"] == contender
                and (p["batch"], p["d_model"]) == (B, H * head_size)
                and p["mode"] == "fwdbwd"
                and "seconds" in p
            )
            if pts:
                T, ms, mib = zip(*pts, strict=True)
                axes[0, col].plot(T, ms, marker="o", label=kernels.LABELS[contender])
                axes[1, col].plot(T, mib, marker="o", label=kernels.LABELS[contender])
        for row, label in enumerate(("forward+backward ms", "peak MiB (forward+backward)")):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"B={B}, d_model {H * head_size}, bf16", fontsize=9)
    if axes[0, -1].get_legend_handles_labels()[0]:
        axes[0, -1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="B=8, H*K=4096, T = 2048 and 8192")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="stop a series past this per call")
    parser.add_argument("--train-ctx", type=int, default=4096)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_kernels.py needs a CUDA device; the CPU figures are benchmarks/wkv_kernels.py's",
            file=sys.stderr,
        )
        return 2
    contenders, missing = available_contenders()
    for name, why in missing.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    shapes = [(8, 64)] if args.quick else SHAPES
    seq_lens = [2048, 8192] if args.quick else SEQ_LENS
    points = sweep(contenders, shapes, seq_lens, kernels.MODES, args.max_seconds)
    train = None if args.no_train else training_step(args.train_ctx, args.train_steps)
    versions = {}
    for dist in ("triton", "fla-core", "transformers"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = None
    env = {**environment(), "device": torch.cuda.get_device_name(0), "packages": versions}
    out = write_json(
        "gpu_kernels",
        {
            "environment_gpu": env,
            "contenders_missing": missing,
            "points": points,
            "goals": goals(points),
            "training_step": train,
        },
    )
    plot(RESULTS / "gpu_kernels.png", points, shapes, f"WKV kernels on {env['device']}")
    print(f"wrote {out} and gpu_kernels.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
