"""WKV kernels on one RWKV-6-sized layer: the chunked form against the per-token recurrence.

Usage: python benchmarks/wkv_kernels.py [--quick] [--threads N]

One layer of B=1, H=12 heads of N=64, per-token (Finch) decay, float32 unless noted:

- time: forward (under no_grad) and forward+backward (gradients of r, k, v, log_w, u and the initial
  state) at T = 512, 1024, 2048 for both kernels; the chunked kernel's bf16 forward, its constant
  (Eagle) decay path, and its chunk sizes at T = 512 and 2048. Minimum wall and CPU time over
  rounds in which every contender runs once.
- peak memory: process high-water mark (VmHWM) of the chunked kernel, forward and
  forward+backward, at T = 512 ... 4096, each point in a fresh subprocess; the recurrence's
  forward+backward at 512 and 1024 for comparison. "delta" is the rise over the inputs alone.
- accuracy: float32 and bf16 chunked against the float64 chunked kernel at T = 2048 (output, final
  state and all six gradients; the float64 kernel itself matches the reference loop to ~1e-15 in
  tests/ops/test_wkv.py), and float32 chunked and recurrent against the float64 reference loop at
  T = 512. Errors are max|a - b| / max|b|.

Every contender runs under the same allocator setting (common.MALLOC_ENV, recorded in the output).
Result: benchmarks/results/wkv_kernels.json and wkv_kernels.png.

Example (the shared 2-core machine, whose other load makes two threads stall on small ops):
python benchmarks/wkv_kernels.py --threads 1  ->  "floor": {"train_step_speedup_min_wall": 10.0,
"meets_10x": true, "memory_linear": true}; the T=512 speedup has ranged 7-12x between runs (the
recurrent step varies most), against 16-23x at 1024 and 34-45x at 2048. From T > 512 the chunked
kernel recomputes 128-token segments in backward, so its forward+backward memory above the inputs
stays near 70 MB from 1024 to 4096.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MALLOC_ENV, ensure_malloc_env, write_json  # noqa: E402

from eaglefinch.ops import wkv_chunked, wkv_recurrent, wkv_reference  # noqa: E402

B, H, N = 1, 12, 64
NAMES = ("y", "state", "dr", "dk", "dv", "dlog_w", "du", "dstate0")


def make_inputs(T: int, decay: str = "finch", seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 inputs; decays spread from ~1 - 1e-4 to ~e^-50, most between 0.5 and 0.99."""
    gen = torch.Generator().manual_seed(seed)
    decay_shape = (B, T, H, N) if decay == "finch" else (H, N)
    return {
        "r": torch.randn(B, T, H, N, generator=gen),
        "k": torch.randn(B, T, H, N, generator=gen) / N**0.5,
        "v": torch.randn(B, T, H, N, generator=gen),
        "log_w": -torch.exp(2 * torch.randn(decay_shape, generator=gen) - 1),
        "u": 0.5 * torch.randn(H, N, generator=gen),
        "state": torch.randn(B, H, N, N, generator=gen),
    }


def prepare(x: dict[str, torch.Tensor], dtype: torch.dtype, backward: bool) -> list[torch.Tensor]:
    """r, k, v, log_w, u in ``dtype`` and the state in float32 (float64 with float64), as fresh leaves."""
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    leaves = [x[n].to(dtype, copy=True).requires_grad_(backward) for n in ("r", "k", "v", "log_w", "u")]
    return [*leaves, x["state"].to(state_dtype, copy=True).requires_grad_(backward)]


def cotangents(leaves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random gradients for y (in r's dtype) and the final state, the same values for every dtype
    (drawn in bf16, which all of them represent exactly)."""
    gen = torch.Generator().manual_seed(1)
    r, state = leaves[0], leaves[-1]
    dy = torch.randn(r.shape, generator=gen).bfloat16().to(r.dtype)
    return dy, torch.randn(state.shape, generator=gen).bfloat16().to(state.dtype)


def call(kernel, leaves: list[torch.Tensor], backward: bool, grads=None, **kw):
    """One call; with ``backward``, the gradients of all six inputs for the cotangents ``grads`` of
    (y, state), returned with y and the state."""
    if not backward:
        with torch.no_grad():
            return kernel(*leaves, **kw)
    for t in leaves:
        t.grad = None
    y, state = kernel(*leaves, **kw)
    torch.autograd.backward([y, state], list(grads or cotangents(leaves)))
    return dict(zip(NAMES, [y.detach(), state.detach(), *(t.grad for t in leaves)], strict=True))


def run(kernel, x: dict[str, torch.Tensor], backward: bool, dtype: torch.dtype = torch.float32, **kw):
    return call(kernel, prepare(x, dtype, backward), backward, **kw)


def timed(kernel, x: dict[str, torch.Tensor], backward: bool, dtype: torch.dtype = torch.float32, **kw):
    """A zero-argument call for timing, its inputs prepared outside it."""
    leaves = prepare(x, dtype, backward)
    grads = cotangents(leaves)
    return lambda: call(kernel, leaves, backward, grads, **kw)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def best_times(fn, repeat: int, warmup: int = 1) -> tuple[float, float]:
    """Minimum wall time and minimum CPU time of this process over ``repeat`` calls, in seconds.

    On a shared machine the wall time includes waiting for a core; the CPU time does not (it still
    includes the slowdown from others' memory traffic). Both are reported.
    """
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def timings(quick: bool) -> list[dict]:
    """Each contender's minimum over rounds; within a round every contender runs once, so that
    slow spells of a shared machine fall on all of them alike rather than on whichever ran then."""
    rows = []
    Ts = (512, 1024) if quick else (512, 1024, 2048)
    rounds = 2 if quick else 5
    warm = timed(wkv_chunked, make_inputs(max(Ts)), True)
    for _ in range(2):  # grow the allocator's pool to its working size before any timing
        warm()
    for T in Ts:
        x, xe = make_inputs(T), make_inputs(T, decay="eagle")
        # (kernel, dtype, pass, call, rounds it runs in): the recurrent training step is O(T^2),
        # about 5 s at T=2048 on a quiet machine, so it runs in fewer rounds
        contenders = [
            ("chunked", "fp32", "forward", timed(wkv_chunked, x, False), rounds),
            ("chunked", "fp32", "forward+backward", timed(wkv_chunked, x, True), rounds),
            ("chunked", "bf16", "forward", timed(wkv_chunked, x, False, torch.bfloat16), rounds),
            ("chunked-eagle", "fp32", "forward", timed(wkv_chunked, xe, False), rounds),
            ("chunked-eagle", "fp32", "forward+backward", timed(wkv_chunked, xe, True), rounds),
            ("recurrent", "fp32", "forward", timed(wkv_recurrent, x, False), 3),
            ("recurrent", "bf16", "forward", timed(wkv_recurrent, x, False, torch.bfloat16), 3),
            ("recurrent", "fp32", "forward+backward", timed(wkv_recurrent, x, True), 1 if T >= 2048 else 3),
        ]
        best: dict[int, tuple[float, float]] = {}
        for round_ in range(rounds):
            for i, (_, _, _, fn, n) in enumerate(contenders):
                if round_ < n:
                    wall, cpu = best_times(fn, repeat=1, warmup=0)
                    old = best.get(i, (float("inf"), float("inf")))
                    best[i] = (min(old[0], wall), min(old[1], cpu))
        for i, (kernel, dtype, pass_, _, _) in enumerate(contenders):
            seconds, cpu = best[i]
            row = {
                "kernel": kernel,
                "dtype": dtype,
                "pass": pass_,
                "T": T,
                "seconds": seconds,
                "cpu_seconds": cpu,
            }
            rows.append(row)
            print(
                f"T={T:5d} {kernel:14s} {dtype} {pass_:17s} {seconds * 1e3:9.1f} ms (cpu {cpu * 1e3:9.1f})",
                flush=True,
            )
    return rows


def chunk_sweep(quick: bool) -> list[dict]:
    rows = []
    for T, chunk in [(T, c) for T in ((512,) if quick else (512, 2048)) for c in (16, 32, 64, 128)]:
        x = make_inputs(T)
        for pass_, backward in (("forward", False), ("forward+backward", True)):
            fn = timed(wkv_chunked, x, backward, chunk_size=chunk)
            seconds, cpu = best_times(fn, repeat=2 if quick else 4)
            rows.append({"chunk_size": chunk, "pass": pass_, "T": T, "seconds": seconds, "cpu_seconds": cpu})
            print(
                f"T={T} chunk {chunk:3d} {pass_:17s} {seconds * 1e3:8.1f} ms (cpu {cpu * 1e3:8.1f})",
                flush=True,
            )
    return rows


def high_water_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent through fork and exec, so a child spawned by a big process starts at the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_point(kernel: str, T: int, backward: bool) -> dict:
    """Runs in a fresh process: high-water mark of one call, and of the inputs alone before it."""
    leaves = prepare(make_inputs(T), torch.float32, backward)
    before = high_water_mb()
    call(wkv_chunked if kernel == "chunked" else wkv_recurrent, leaves, backward)
    peak = high_water_mb()
    return {
        "kernel": kernel,
        "T": T,
        "pass": "forward+backward" if backward else "forward",
        "peak_mb": round(peak, 1),
        "delta_mb": round(peak - before, 1),
    }


def memory(quick: bool) -> list[dict]:
    points = [("chunked", T, bw) for T in (512, 1024, 2048, 4096) for bw in (False, True)]
    points += [("recurrent", T, True) for T in (512, 1024)]
    if quick:
        points = [p for p in points if p[1] <= 1024]
    rows = []
    for kernel, T, backward in points:
        cmd = [sys.executable, __file__, "--memory-point", kernel, str(T), str(int(backward))]
        cmd += ["--threads", str(torch.get_num_threads())]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"memory T={T:5d} {kernel:9s} {row['pass']:17s} peak {row['peak_mb']:8.1f} MB, "
            f"delta {row['delta_mb']:8.1f} MB",
            flush=True,
        )
    return rows


def accuracy(quick: bool) -> dict:
    out = {}
    T = 512 if quick else 2048
    x = make_inputs(T)
    ref = run(wkv_chunked, x, True, torch.float64)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        got = run(wkv_chunked, x, True, dtype)
        out[f"chunked_{name}_vs_chunked_fp64_T{T}"] = {n: rel_error(got[n], ref[n]) for n in NAMES}
    y, state = run(wkv_recurrent, x, False)
    out[f"recurrent_fp32_vs_chunked_fp64_T{T}"] = {
        "y": rel_error(y, ref["y"]),
        "state": rel_error(state, ref["state"]),
    }
    T = 256 if quick else 512
    x = make_inputs(T)
    with torch.no_grad():
        y_ref, s_ref = wkv_reference(*(x[n] for n in ("r", "k", "v", "log_w", "u", "state")))
    for kernel, name in ((wkv_chunked, "chunked"), (wkv_recurrent, "recurrent")):
        for dtype, dname in ((torch.float64, "fp64"), (torch.float32, "fp32")):
            if kernel is wkv_recurrent and dtype == torch.float64:
                continue  # the recurrence computes in float32 whatever the input dtype
            y, state = run(kernel, x, False, dtype)
            out[f"{name}_{dname}_vs_reference_T{T}"] = {
                "y": rel_error(y, y_ref),
                "state": rel_error(state, s_ref),
            }
    for key, errs in out.items():
        print(f"accuracy {key}: " + " ".join(f"{n}={e:.1e}" for n, e in errs.items()), flush=True)
    return out


def summarise(times: list[dict], mem: list[dict]) -> dict:
    def t(kernel, pass_, T, key):
        for row in times:
            if (row["kernel"], row["pass"], row["T"], row["dtype"]) == (kernel, pass_, T, "fp32"):
                return row[key]
        return None

    Ts = sorted({row["T"] for row in times})
    speedups = {
        f"{pass_} ({clock})": {T: t("recurrent", pass_, T, key) / t("chunked", pass_, T, key) for T in Ts}
        for pass_ in ("forward", "forward+backward")
        for clock, key in (("wall", "seconds"), ("cpu", "cpu_seconds"))
    }
    chunked_mem = {
        pass_: {
            row["T"]: row["delta_mb"] for row in mem if row["kernel"] == "chunked" and row["pass"] == pass_
        }
        for pass_ in ("forward", "forward+backward")
    }
    # growth per doubling of T: 2 for linear memory, 4 for quadratic
    growth = {
        pass_: {f"{T}->{2 * T}": d[2 * T] / d[T] for T in sorted(d) if 2 * T in d}
        for pass_, d in chunked_mem.items()
    }
    return {
        "speedup_recurrent_over_chunked": speedups,
        "chunked_memory_delta_mb": chunked_mem,
        "chunked_memory_growth_per_doubling": growth,
        "floor": {
            "train_step_speedup_min_wall": min(speedups["forward+backward (wall)"].values()),
            "train_step_speedup_min_cpu": min(speedups["forward+backward (cpu)"].values()),
            "meets_10x": min(speedups["forward+backward (wall)"].values()) >= 10
            and min(speedups["forward+backward (cpu)"].values()) >= 10,
            "memory_linear": all(g <= 2.4 for g in growth["forward+backward"].values()),
        },
    }


def _log_log_panel(
    ax, lines: list[tuple[list, str, str, str]], Ts: set[int], ylabel: str, title: str
) -> None:
    """Draw ``lines`` of (points [(T, value)], line style, colour, label) on log-log axes, ticks at ``Ts``."""
    for pts, style, color, label in lines:
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel=ylabel, title=title)
    ticks = sorted(Ts)
    ax.set_xticks(ticks, [str(T) for T in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=7)


def plot(times: list[dict], mem: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [
        ("recurrent", "fp32", "forward+backward", "C3", "-"),
        ("recurrent", "fp32", "forward", "C3", "--"),
        ("chunked", "fp32", "forward+backward", "C0", "-"),
        ("chunked", "fp32", "forward", "C0", "--"),
        ("chunked", "bf16", "forward", "C2", ":"),
        ("chunked-eagle", "fp32", "forward+backward", "C1", "-"),
    ]
    time_lines = [
        (
            sorted(
                (r["T"], r["seconds"])
                for r in times
                if (r["kernel"], r["dtype"], r["pass"]) == (kernel, dtype, pass_)
            ),
            style,
            color,
            f"{kernel} {dtype} {pass_}",
        )
        for kernel, dtype, pass_, color, style in series
    ]
    _log_log_panel(ax1, time_lines, {r["T"] for r in times}, "seconds", f"one layer, B={B}, H={H}, N={N}")
    mem_lines = [
        (
            sorted((r["T"], r["delta_mb"]) for r in mem if (r["kernel"], r["pass"]) == (kernel, pass_)),
            style,
            color,
            f"{kernel} {pass_}",
        )
        for kernel, pass_, color, style in (
            ("chunked", "forward+backward", "C0", "-"),
            ("chunked", "forward", "C0", "--"),
            ("recurrent", "forward+backward", "C3", "-"),
        )
    ]
    _log_log_panel(
        ax2,
        mem_lines,
        {r["T"] for r in mem},
        "peak memory over the inputs (MB)",
        "peak memory (VmHWM, fresh process per point)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--memory-point", nargs=3, metavar=("KERNEL", "T", "BACKWARD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    ensure_malloc_env()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_point:
        kernel, T, backward = args.memory_point
        print(json.dumps(memory_point(kernel, int(T), bool(int(backward)))))
        return
    times = timings(args.quick)
    sweep = chunk_sweep(args.quick)
    mem = memory(args.quick)
    acc = accuracy(args.quick)
    summary = summarise(times, mem)
    print(json.dumps(summary, indent=1))
    data = {
        "layer": {"B": B, "H": H, "N": N, "decay": "per token (Finch) unless the kernel says eagle"},
        "malloc_env_for_every_contender": MALLOC_ENV,
        "summary": summary,
        "timings": times,
        "chunk_size_sweep": sweep,
        "memory": mem,
        "accuracy_max_rel_error": acc,
    }
    if args.quick:  # a smoke test: nothing written under results/
        plot(times, mem, Path("/tmp/wkv_kernels_quick.png"))
        return
    path = write_json("wkv_kernels", data)
    plot(times, mem, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
