"""Training speed and memory on this machine (CPU): a full optimiser step of ``eaglefinch.train``.

One step is forward + backward (with RWKV-LM's L2Wrap) + gradient clipping + AdamW, exactly as the
training loop runs it (``LossModule`` and ``make_optimizer``). Every contender runs in its own
fresh process, under the same allocator settings (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``),
at the same nice level. Measured:

* tokens/s for the tiny preset (finch-tiny, batch 4 x 512) and for L12-D768 (finch-l12-d768, batch 1)
  at context 512 and 2048 in fp32, and bf16 autocast where it can finish (see ``grid``): the median
  of the steps after a warm-up step (two for tiny, one for L12 at 512); at 2048, the one step of a
  fresh process; with a probe of fp32 against bf16 matrix products on this CPU;
* the memory of a training step against context length, L12-D768 fp32: the activations autograd
  keeps for the backward (allocator-independent) and peak RSS during the step minus RSS before it,
  each with a straight-line fit;
* at context 2048, one step with the chunked WKV kernel against one that runs the WKV recurrence
  token by token (``model.set_wkv_mode("recurrent")``) and one that runs the whole model as an RNN
  (every layer and the head one token at a time), on 2 layers of the L12-D768 width; and the WKV
  kernels alone (one layer, forward + backward).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 nice python benchmarks/train_speed.py

writes ``benchmarks/results/train_speed.json`` and ``train_speed.png``. ``--quick`` runs a smaller
grid (for checking the script itself). ``--only NAME,PREFIX-`` measures those contenders again and
keeps the others from the existing output (recorded as ``remeasured`` and ``kept_from_commit``).
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


def wkv_worker(spec: dict) -> dict:
    """The WKV kernel alone: forward + backward of one Finch layer's recurrence (B=1, 12 heads of 64)."""
    import torch

    from eaglefinch.ops import wkv

    torch.set_num_threads(spec["threads"])
    T, H, N = spec["ctx"], 12, 64
    gen = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(1, T, H, N, generator=gen).requires_grad_() for _ in range(3))
    log_w = (-torch.exp(torch.randn(1, T, H, N, generator=gen) - 1)).requires_grad_()
    u = torch.randn(H, N, generator=gen, requires_grad=True)
    rss_before = _status_kb("VmRSS")
    peak_ok = _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    y, state = wkv(r, k, v, log_w, u, None, mode=spec["wkv"])
    (y.square().sum() + state.sum()).backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = _status_kb("VmHWM")
    return {
        **spec,
        "median_step_seconds": seconds,
        "step_cpu_seconds": [cpu_seconds],
        "first_step_extra_mb": (peak - rss_before) / 1024 if peak_ok else None,
    }


def worker(spec: dict) -> dict:
    import torch

    from eaglefinch import RWKV, RWKVConfig
    from eaglefinch.train.loop import LossModule
    from eaglefinch.train.optim import make_optimizer, set_lr

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = RWKVConfig.preset(spec["preset"])
    if spec.get("n_layer"):
        config = config.replace(n_layer=spec["n_layer"])
    model = RWKV(config)
    if spec["wkv"] == "rnn":
        module = rnn_mode_loss(model, l2wrap=1e-4)
    else:
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

    saved_mb = _saved_for_backward_mb(module, inputs, targets) if spec.get("saved") else None
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
        "saved_for_backward_mb": saved_mb,
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": peak / 1024,
        "wkv_kernel": _kernel_name(spec["wkv"]),
    }


def rnn_mode_loss(model, l2wrap: float):
    """The whole model run as an RNN: one token at a time, the state carried, backpropagated through
    all T steps; the same loss as ``LossModule`` on the same logits."""
    import torch

    from eaglefinch.train.loop import LossModule

    class RNNModeLoss(LossModule):
        def forward(self, inputs, targets, l2_scale: float = 1.0):
            state, pieces = None, []
            for t in range(inputs.shape[1]):
                logits, state = self.model(inputs[:, t : t + 1], state)
                pieces.append(logits)
            return self.loss_from_logits(torch.cat(pieces, dim=1), targets, l2_scale)

    return RNNModeLoss(model, l2wrap=l2wrap)


def matmul_probe(threads: int) -> list[dict]:
    """fp32 against bf16 GEMM throughput (GFLOP per CPU-second) for shapes a training step uses."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    shapes = (
        (512, 768, 768, "block projection"),
        (128, 128, 65536, "head, forward"),
        (128, 65536, 128, "head, input gradient"),
    )
    for m, k, n, what in shapes:
        a, b = torch.randn(m, k), torch.randn(n, k).t()  # B as autograd sees a weight: a transposed view
        row = {"m": m, "k": k, "n": n, "what": what}
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            x @ y
            start = time.process_time()
            x @ y
            name = str(dtype).removeprefix("torch.")
            row[f"{name}_gflop_per_cpu_s"] = 2 * m * k * n / (time.process_time() - start) / 1e9
        rows.append(row)
    return rows


def _saved_for_backward_mb(module, inputs, targets) -> float:
    """Activation memory a forward pass keeps for the backward: the distinct tensor storages autograd
    saves, parameters excluded. Unlike peak RSS it does not depend on the allocator."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(inputs, targets)
    return sum(seen.values()) / 2**20


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
    started, load = time.perf_counter(), os.getloadavg()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # recorded, not fatal: e.g. killed for memory
        print(f"  {spec['name']:<28} FAILED (exit {done.returncode})", flush=True)
        return {**spec, "failed": f"exit {done.returncode}", "stderr_tail": done.stderr[-2000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    result["load_average_before"] = load  # other work on the machine shows here
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if spec.get("kind") == "wkv":
        print(f"  {spec['name']:<28} {result['median_step_seconds']:9.2f} s forward + backward", flush=True)
        return result
    print(
        f"  {spec['name']:<28} {result['tokens_per_second']:9.1f} tok/s  "
        f"({result['tokens_per_cpu_second']:9.1f} per CPU-s)  step {result['median_step_seconds']:7.2f} s"
        f"  step extra {result['first_step_extra_mb'] or float('nan'):8.0f} MB",
        flush=True,
    )
    return result


def grid(quick: bool, threads: int) -> list[dict]:
    specs = []

    def add(name, preset, ctx, batch, precision, timed, wkv="auto", n_layer=None, saved=False):
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
                "n_layer": n_layer,
                "saved": saved,
            }
        )

    big, tag = ("finch-small", "L4D256") if quick else ("finch-l12-d768", "L12D768")
    short, long = (128, 256) if quick else (512, 2048)
    # Timed steps after the first: 2 for the tiny model, 1 for L12 at the short context; at the
    # long context the first step is the measurement (its one-time costs are small next to it).
    add(f"tiny-ctx{short}-fp32", "finch-tiny", short, 4, "fp32", 2)
    add(f"{tag}-ctx{short}-fp32", big, short, 1, "fp32", 1, saved=True)
    add(f"{tag}-ctx{long}-fp32", big, long, 1, "fp32", 0, saved=True)
    for ctx in (64, 192) if quick else (256, 1024):
        add(f"memory-{tag}-ctx{ctx}-fp32", big, ctx, 1, "fp32", 0, saved=True)
    # Token by token, autograd keeps several N x N matrices per token, head and layer (about 1 MB
    # per token and layer at D768): at ctx 2048 the 12-layer step needs more memory than this
    # machine has. Both kernels are therefore compared on 2 layers of the same width.
    few, few_tag = ("finch-small", "L2D256") if quick else ("finch-l12-d768", "L2D768")
    add(f"chunked-{few_tag}-ctx{long}-fp32", few, long, 1, "fp32", 1, n_layer=2, saved=True)
    add(
        f"recurrent-{few_tag}-ctx{long}-fp32", few, long, 1, "fp32", 0, wkv="recurrent", n_layer=2, saved=True
    )
    # The whole model as an RNN (every layer and the head one token at a time), as one would
    # train a recurrent network without the parallel form.
    add(f"rnnmode-{few_tag}-ctx{long}-fp32", few, long, 1, "fp32", 0, wkv="rnn", n_layer=2)
    # The kernels alone, one layer's WKV forward + backward at the long context.
    for mode in ("chunked", "recurrent"):
        specs.append(
            {
                "name": f"wkv-{mode}-H12N64-ctx{long}",
                "kind": "wkv",
                "preset": "-",
                "ctx": long,
                "batch": 1,
                "precision": "fp32",
                "timed": 0,
                "wkv": mode,
                "threads": threads,
            }
        )
    # bf16 autocast: one step each. Where the CPU has no bf16 matrix units, torch's bf16 GEMM is
    # 5-10x slower than fp32 (see the matmul probe): the long-context L12 step takes about half an
    # hour there, so it runs last.
    add(f"tiny-ctx{short}-bf16", "finch-tiny", short, 4, "bf16", 0)
    add(f"{tag}-ctx{short}-bf16", big, short, 1, "bf16", 0)
    add(f"{tag}-ctx{long}-bf16", big, long, 1, "bf16", 0)
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
    try:
        flags = next(
            line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        flags = []
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_vector_flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
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


def summarise(all_results: list[dict]) -> dict:
    results = [r for r in all_results if "failed" not in r and r.get("kind") != "wkv"]
    kernels = {r["wkv"]: r for r in all_results if r.get("kind") == "wkv" and "failed" not in r}
    by = {r["name"]: r for r in results}
    out: dict = {"tokens_per_second": {}, "tokens_per_cpu_second": {}, "bf16_over_fp32": {}}
    for r in results:
        if not r["name"].startswith(("memory", "recurrent", "chunked", "rnnmode")):
            out["tokens_per_second"][r["name"]] = round(r["tokens_per_second"], 1)
            out["tokens_per_cpu_second"][r["name"]] = round(r["tokens_per_cpu_second"], 1)
    for name, r in by.items():
        if name.endswith("-bf16"):
            fp32 = by[name[:-5] + "-fp32"]
            out["bf16_over_fp32"][name[:-5]] = {
                "wall": round(r["tokens_per_second"] / fp32["tokens_per_second"], 4),
                "cpu_time": round(r["tokens_per_cpu_second"] / fp32["tokens_per_cpu_second"], 4),
            }
    out["failed"] = {r["name"]: r["failed"] for r in all_results if "failed" in r}
    if {"chunked", "recurrent"} <= kernels.keys():
        c, rec = kernels["chunked"], kernels["recurrent"]
        out["wkv_kernel_only"] = {
            "ctx": c["ctx"],
            "heads": 12,
            "head_size": 64,
            "chunked_seconds": c["median_step_seconds"],
            "recurrent_seconds": rec["median_step_seconds"],
            "speedup": round(rec["median_step_seconds"] / c["median_step_seconds"], 1),
            "chunked_extra_mb": c["first_step_extra_mb"],
            "recurrent_extra_mb": rec["first_step_extra_mb"],
        }
    recurrent = next((r for r in results if r["name"].startswith("recurrent-")), None)
    chunked = next((r for r in results if r["name"].startswith("chunked-")), None)
    if recurrent is None or chunked is None:
        out["chunked_vs_recurrent"] = None
    else:
        out["chunked_vs_recurrent"] = _versus(chunked, recurrent)
    rnn = next((r for r in results if r["name"].startswith("rnnmode-")), None)
    out["chunked_vs_rnn_mode"] = _versus(chunked, rnn) if rnn and chunked else None
    big = next((r["preset"] for r in results if r["name"].startswith("memory-")), None)
    memory = sorted(
        (r["ctx"], r["saved_for_backward_mb"], r["first_step_extra_mb"])
        for r in results
        if r["preset"] == big and not r.get("n_layer") and r.get("saved_for_backward_mb") is not None
    )
    xs = [c for c, _, _ in memory]
    out["memory_vs_context"] = {
        "points": [
            {"ctx": c, "saved_for_backward_mb": round(a, 1), "peak_rss_step_extra_mb": round(b, 1)}
            for c, a, b in memory
        ],
        "saved_for_backward_fit": linear_fit(xs, [a for _, a, _ in memory]) if len(memory) > 1 else None,
        "peak_rss_fit": linear_fit(xs, [b for _, _, b in memory]) if len(memory) > 1 else None,
    }
    return out


def _timed_cpu(result: dict) -> float:
    cpu = result["step_cpu_seconds"]
    return statistics.median(cpu[1:] if len(cpu) > 1 else cpu)


def _versus(chunked: dict, recurrent: dict) -> dict:
    return {
        "preset": recurrent["preset"],
        "n_layer": recurrent["n_layer"],
        "ctx": recurrent["ctx"],
        "chunked_step_seconds": chunked["median_step_seconds"],
        "recurrent_step_seconds": recurrent["median_step_seconds"],
        "speedup": round(recurrent["median_step_seconds"] / chunked["median_step_seconds"], 2),
        "chunked_step_cpu_seconds": _timed_cpu(chunked),
        "recurrent_step_cpu_seconds": _timed_cpu(recurrent),
        "cpu_time_speedup": round(_timed_cpu(recurrent) / _timed_cpu(chunked), 2),
        "chunked_step_extra_mb": chunked["first_step_extra_mb"],
        "recurrent_step_extra_mb": recurrent["first_step_extra_mb"],
        "chunked_saved_for_backward_mb": chunked.get("saved_for_backward_mb"),
        "recurrent_saved_for_backward_mb": recurrent.get("saved_for_backward_mb"),
    }


def plot(results: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), dpi=110, layout="constrained")
    names = [n[:-5] for n in summary["tokens_per_second"] if n.endswith("-fp32")]
    x = range(len(names))
    for offset, precision, color in ((-0.2, "fp32", "tab:blue"), (0.2, "bf16", "tab:orange")):
        got = [(i, summary["tokens_per_cpu_second"].get(f"{n}-{precision}")) for i, n in enumerate(names)]
        shown = [(i, v) for i, v in got if v]
        bars = axes[0].bar(
            [i + offset for i, _ in shown], [v for _, v in shown], width=0.4, color=color, label=precision
        )
        axes[0].bar_label(bars, fmt="%.1f", fontsize=8)
        for i, v in got:
            if not v:  # a contender left out of the grid
                axes[0].annotate(
                    "not run",
                    (i + offset, 0.02),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    axes[0].set_xticks(list(x), names, fontsize=8)
    axes[0].set_ylabel("training tokens per CPU-second")
    axes[0].set_yscale("log")
    axes[0].set_title("training throughput (full AdamW step)")
    axes[0].legend()

    mem = summary["memory_vs_context"]
    cs = [p["ctx"] for p in mem["points"]]
    for key, fit_key, color, label in (
        ("saved_for_backward_mb", "saved_for_backward_fit", "tab:blue", "kept for backward"),
        ("peak_rss_step_extra_mb", "peak_rss_fit", "tab:gray", "peak RSS - RSS before"),
    ):
        axes[1].plot(cs, [p[key] for p in mem["points"]], "o", color=color)
        fit = mem[fit_key]
        if fit:
            axes[1].plot(
                [0, max(cs)],
                [fit["intercept_mb"], fit["intercept_mb"] + fit["slope_mb_per_token"] * max(cs)],
                "-",
                color=color,
                label=f"{label}: {fit['slope_mb_per_token']:.2f} MB/token, R² {fit['r2']:.3f}",
            )
    axes[1].set_xlabel("context length (tokens, batch 1)")
    axes[1].set_ylabel("MB")
    axes[1].set_title("L12-D768 fp32: memory of a training step vs context")
    axes[1].legend(fontsize=8)

    cr, wk = summary["chunked_vs_recurrent"], summary.get("wkv_kernel_only")
    rnn = summary.get("chunked_vs_rnn_mode")
    labels, values, colors = [], [], []
    if cr:
        labels += [f"step L{cr['n_layer']}-D768\nchunked", "step, WKV\ntoken by token"]
        values += [cr["chunked_step_seconds"], cr["recurrent_step_seconds"]]
        colors += ["tab:green", "tab:red"]
    if rnn:
        labels += ["step, whole\nmodel as RNN"]
        values += [rnn["recurrent_step_seconds"]]
        colors += ["tab:purple"]
    if wk:
        labels += ["WKV alone\nchunked", "WKV alone\ntoken by token"]
        values += [wk["chunked_seconds"], wk["recurrent_seconds"]]
        colors += ["tab:green", "tab:red"]
    if values:
        bars = axes[2].bar(labels, values, color=colors)
        axes[2].bar_label(bars, fmt="%.2f s", fontsize=8)
        axes[2].set_yscale("log")
        axes[2].tick_params(axis="x", labelsize=8)
    parts = []
    if cr:
        parts.append(f"step {cr['speedup']:.1f}x")
    if rnn:
        parts.append(f"step vs RNN mode {rnn['speedup']:.0f}x")
    if wk:
        parts.append(f"WKV alone {wk['speedup']:.0f}x")
    ctx = (cr or wk or {}).get("ctx", "?")
    axes[2].set_ylabel("seconds (forward + backward)")
    speedups = ", ".join(parts) if parts else "no comparison"
    axes[2].set_title(f"ctx {ctx}, fp32, chunked over token by token:\n{speedups}", fontsize=10)
    fig.suptitle(title, fontsize=9)
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
    parser.add_argument(
        "--only",
        help="comma-separated contender names (or name prefixes) to measure again; the others are "
        "kept from the existing --out file (after a change that only affects those)",
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(wkv_worker(spec) if spec.get("kind") == "wkv" else worker(spec)))
        return
    if args.probe:
        print(json.dumps(matmul_probe(args.threads)))
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
    remeasured = []
    if args.only:
        if not out.exists():
            sys.exit(f"--only keeps the other contenders from {out}, which does not exist: run the full grid")
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        previous = json.loads(out.read_text(encoding="utf-8"))
        kept = {r["name"]: r for r in previous["results"]}
        names = [spec["name"] for spec in grid(args.quick, args.threads)]
        remeasured = [name for name in names if name.startswith(tuple(prefixes))]
        if not remeasured:
            sys.exit(f"--only {args.only}: no contender of the grid matches")
        done = {name: r for name, r in kept.items() if name not in remeasured and name not in done} | done
        stamp["kept_from_commit"] = previous["machine"].get("git_commit")
    for spec in grid(args.quick, args.threads):
        if spec["name"] in done:
            results.append(done[spec["name"]])
            print(f"  {spec['name']:<28} (measured before, kept)", flush=True)
            continue
        results.append(run_contender(spec, args.nice))
        partial.write_text(json.dumps(results, indent=1), encoding="utf-8")
    probe_command = [
        "nice",
        "-n",
        str(args.nice),
        sys.executable,
        __file__,
        "--probe",
        "--threads",
        str(args.threads),
    ]
    probe_env = {**os.environ, **MALLOC, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(probe_command, capture_output=True, text=True, env=probe_env, check=True)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    for row in probe:
        print(
            f"  matmul {row['m']}x{row['k']}x{row['n']} ({row['what']}): "
            f"fp32 {row['float32_gflop_per_cpu_s']:.1f}, "
            f"bf16 {row['bfloat16_gflop_per_cpu_s']:.2f} GFLOP per CPU-s",
            flush=True,
        )
    summary = summarise(results)
    summary["matmul_probe"] = probe
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
        # with --only: these were measured by this run, the others kept from the commit above
        "remeasured": remeasured,
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
