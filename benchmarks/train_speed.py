"""Training speed and memory on this machine (CPU): a full optimiser step of ``eaglefinch.train``.

One step is forward + backward (with RWKV-LM's L2Wrap) + gradient clipping + AdamW, exactly as the
training loop runs it (``LossModule`` and ``make_optimizer``). Every contender runs in its own
fresh process, under the same allocator settings (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``),
at the same nice level. Measured:

* tokens/s for the tiny preset (finch-tiny, batch 4 x 512) and for L12-D768 (finch-l12-d768, batch 1)
  at context 512 and 2048, fp32 and bf16 autocast: the median of the steps after a warm-up step
  (two for tiny, one for L12 at 512); at 2048, the one step of a fresh process;
* the extra memory of a training step (peak RSS during the step minus RSS before it, on a fresh
  process) against context length, L12-D768 fp32, with a straight-line fit;
* one step with the chunked WKV kernel against one that runs the recurrence token by token
  (``model.set_wkv_mode("recurrent")``), L12-D768 fp32 at context 2048.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 nice python benchmarks/train_speed.py

writes ``benchmarks/results/train_speed.json`` and ``train_speed.png``. ``--quick`` runs a smaller
grid (for checking the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


# ---------------------------------------------------------------- worker (one contender per process)


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM (Linux: writing 5 to clear_refs), so the next peak is the step's own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    import torch

    from eaglefinch import RWKV, RWKVConfig
    from eaglefinch.train.loop import LossModule
    from eaglefinch.train.optim import make_optimizer, set_lr

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = RWKVConfig.preset(spec["preset"])
    model = RWKV(config)
    model.set_wkv_mode(spec["wkv"])
    module = LossModule(model, l2wrap=1e-4)
    optimizer = make_optimizer(module, lr=1e-4)
    set_lr(optimizer, 1e-4)
    B, T = spec["batch"], spec["ctx"]
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(1, config.vocab_size, (B, T + 1), generator=gen)
    inputs, targets = data[:, :-1], data[:, 1:]
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16" else None

    cpu_times: list[float] = []

    def step() -> float:
        start, cpu = time.perf_counter(), time.process_time()
        if amp is not None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = module(inputs, targets)
        else:
            loss = module(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        cpu_times.append(time.process_time() - cpu)
        return time.perf_counter() - start

    rss_before = _status_kb("VmRSS")
    peak_ok = _reset_peak()
    times = [step()]
    peak = _status_kb("VmHWM")
    for _ in range(spec["timed"]):
        times.append(step())
    timed = times[1:] if len(times) > 1 else times
    seconds = statistics.median(timed)
    return {
        **spec,
        "parameters": model.num_parameters(),
        "step_seconds": times,
        "median_step_seconds": seconds,
        "tokens_per_second": B * T / seconds,
        # CPU time of all threads: less sensitive than wall time to other work on the machine
        "step_cpu_seconds": cpu_times,
        "tokens_per_cpu_second": B
        * T
        / statistics.median(cpu_times[1:] if len(cpu_times) > 1 else cpu_times),
        "first_step_extra_mb": (peak - rss_before) / 1024 if peak_ok else None,
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": peak / 1024,
        "wkv_kernel": _kernel_name(spec["wkv"]),
    }


def _kernel_name(mode: str) -> str:
    from eaglefinch import ops

    if mode == "recurrent" or ops.wkv_chunked is None:
        return "recurrent (token by token)"
    return "chunked"


# ---------------------------------------------------------------- parent: the grid, the stamp, the plot


def run_contender(spec: dict, nice: int) -> dict:
    env = {
        **os.environ,
        **MALLOC,
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"contender {spec} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    print(
        f"  {spec['name']:<28} {result['tokens_per_second']:9.1f} tok/s  "
        f"({result['tokens_per_cpu_second']:9.1f} per CPU-s)  step {result['median_step_seconds']:7.2f} s"
        f"  step extra {result['first_step_extra_mb'] or float('nan'):8.0f} MB",
        flush=True,
    )
    return result


def grid(quick: bool, threads: int) -> list[dict]:
    specs = []

    def add(name, preset, ctx, batch, precision, timed, wkv="auto"):
        specs.append(
            {
                "name": name,
                "preset": preset,
                "ctx": ctx,
                "batch": batch,
                "precision": precision,
                "timed": timed,
                "wkv": wkv,
                "threads": threads,
            }
        )

    big, tag = ("finch-small", "L4D256") if quick else ("finch-l12-d768", "L12D768")
    short, long = (128, 256) if quick else (512, 2048)
    # Timed steps after the first: 2 for the tiny model, 1 for L12 at the short context; at the
    # long context the first step is the measurement (its one-time costs are small next to it).
    for precision in ("fp32", "bf16"):
        add(f"tiny-ctx{short}-{precision}", "finch-tiny", short, 4, precision, 2)
        add(f"{tag}-ctx{short}-{precision}", big, short, 1, precision, 1)
        add(f"{tag}-ctx{long}-{precision}", big, long, 1, precision, 0)
    for ctx in (64, 192) if quick else (256, 1024):
        add(f"memory-{tag}-ctx{ctx}-fp32", big, ctx, 1, "fp32", 0)
    add(f"recurrent-{tag}-ctx{long}-fp32", big, long, 1, "fp32", 0, wkv="recurrent")
    return specs


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
        "malloc_env": MALLOC,
        "load_average_at_start": os.getloadavg(),
    }


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "slope_mb_per_token": slope,
        "intercept_mb": intercept,
        "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
    }


def summarise(results: list[dict]) -> dict:
    by = {r["name"]: r for r in results}
    out: dict = {"tokens_per_second": {}, "tokens_per_cpu_second": {}, "bf16_over_fp32": {}}
    for r in results:
        if not r["name"].startswith(("memory", "recurrent")):
            out["tokens_per_second"][r["name"]] = round(r["tokens_per_second"], 1)
            out["tokens_per_cpu_second"][r["name"]] = round(r["tokens_per_cpu_second"], 1)
    for name, r in by.items():
        if name.endswith("-bf16"):
            fp32 = by[name[:-5] + "-fp32"]
            out["bf16_over_fp32"][name[:-5]] = round(r["tokens_per_second"] / fp32["tokens_per_second"], 3)
    recurrent = next(r for r in results if r["name"].startswith("recurrent-"))
    chunked = by[recurrent["name"].removeprefix("recurrent-")]
    out["chunked_vs_recurrent"] = {
        "preset": recurrent["preset"],
        "ctx": recurrent["ctx"],
        "chunked_step_seconds": chunked["median_step_seconds"],
        "recurrent_step_seconds": recurrent["median_step_seconds"],
        "speedup": round(recurrent["median_step_seconds"] / chunked["median_step_seconds"], 2),
        "chunked_step_cpu_seconds": statistics.median(chunked["step_cpu_seconds"]),
        "recurrent_step_cpu_seconds": statistics.median(recurrent["step_cpu_seconds"]),
        "cpu_time_speedup": round(
            statistics.median(recurrent["step_cpu_seconds"]) / statistics.median(chunked["step_cpu_seconds"]),
            2,
        ),
        "chunked_step_extra_mb": chunked["first_step_extra_mb"],
        "recurrent_step_extra_mb": recurrent["first_step_extra_mb"],
    }
    memory = sorted(
        (r["ctx"], r["first_step_extra_mb"])
        for r in results
        if r["preset"] == chunked["preset"]
        and r["precision"] == "fp32"
        and r["wkv"] == "auto"
        and r["batch"] == 1
        and r["first_step_extra_mb"] is not None
    )
    out["memory_vs_context"] = {
        "points": [{"ctx": c, "step_extra_mb": round(m, 1)} for c, m in memory],
        **linear_fit([c for c, _ in memory], [m for _, m in memory]),
    }
    return out


def plot(results: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    names = [n[:-5] for n in summary["tokens_per_second"] if n.endswith("-fp32")]
    x = range(len(names))
    for offset, precision, color in ((-0.2, "fp32", "tab:blue"), (0.2, "bf16", "tab:orange")):
        values = [summary["tokens_per_second"][f"{n}-{precision}"] for n in names]
        bars = axes[0].bar([i + offset for i in x], values, width=0.4, color=color, label=precision)
        axes[0].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[0].set_xticks(list(x), names, fontsize=8)
    axes[0].set_ylabel("training tokens / s")
    axes[0].set_yscale("log")
    axes[0].set_title("training throughput (full AdamW step)")
    axes[0].legend()

    mem = summary["memory_vs_context"]
    cs = [p["ctx"] for p in mem["points"]]
    axes[1].plot(cs, [p["step_extra_mb"] for p in mem["points"]], "o", label="measured")
    axes[1].plot(
        [0, max(cs)],
        [mem["intercept_mb"], mem["intercept_mb"] + mem["slope_mb_per_token"] * max(cs)],
        "-",
        label=f"fit: {mem['slope_mb_per_token']:.2f} MB/token, R² {mem['r2']:.4f}",
    )
    axes[1].set_xlabel("context length (tokens, batch 1)")
    axes[1].set_ylabel("peak RSS during the step - RSS before (MB)")
    axes[1].set_title(f"{summary['chunked_vs_recurrent']['preset']} fp32: step memory vs context")
    axes[1].legend(fontsize=8)

    cr = summary["chunked_vs_recurrent"]
    bars = axes[2].bar(
        ["chunked", "token by token"],
        [cr["chunked_step_seconds"], cr["recurrent_step_seconds"]],
        color=["tab:green", "tab:red"],
    )
    axes[2].bar_label(bars, fmt="%.1f s")
    axes[2].set_ylabel("seconds per training step")
    axes[2].set_title(f"{cr['preset']} fp32, ctx {cr['ctx']}: chunked {cr['speedup']:.1f}x faster")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a small grid, to check the script")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    parser.add_argument("--resume", action="store_true", help="keep contenders an interrupted run measured")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    stamp = machine()
    started = time.perf_counter()
    results = []
    print(f"train_speed: {stamp['cpu']} ({stamp['cpu_count']} cores), torch {stamp['torch']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    done = {}
    if args.resume and partial.exists():  # contenders measured by an interrupted run of the same grid
        done = {r["name"]: r for r in json.loads(partial.read_text(encoding="utf-8"))}
    for spec in grid(args.quick, args.threads):
        if spec["name"] in done:
            results.append(done[spec["name"]])
            print(f"  {spec['name']:<28} (measured before, kept)", flush=True)
            continue
        results.append(run_contender(spec, args.nice))
        partial.write_text(json.dumps(results, indent=1), encoding="utf-8")
    summary = summarise(results)
    stamp["load_average_at_end"] = os.getloadavg()
    stamp["seconds"] = round(time.perf_counter() - started, 1)
    report = {
        "benchmark": "train_speed",
        "quick": args.quick,
        "machine": stamp,
        "threads": args.threads,
        "nice": args.nice,
        "summary": summary,
        "results": results,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    title = (
        f"{stamp['cpu']}, {args.threads} threads, torch {stamp['torch']}, "
        f"commit {str(stamp['git_commit'])[:8]}; "
        f"load average {stamp['load_average_at_start'][0]:.1f} at start"
    )
    plot(results, summary, out.with_suffix(".png"), title)
    partial.unlink(missing_ok=True)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
