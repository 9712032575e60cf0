"""``eaglefinch bench kernels``: time and peak memory of the sequence kernels (paper Figures 6 and 7).

Usage::

    eaglefinch bench kernels                          # CPU: B=1, d_model 768, 12 heads of 64
    eaglefinch bench kernels --seq-lens 512,1024 --contenders finch,attention --out /tmp/k
    eaglefinch bench kernels --device cuda            # the paper's: B=8, d_model 4096, heads of 64
    eaglefinch bench kernels --no-skip                # also the points estimated to be too slow

Contenders, each on one layer's worth of input (fp32 on CPU, bf16 on CUDA):

- ``finch``: ``eaglefinch.ops.wkv_chunked.wkv_chunked`` with a per-token decay, r/k/v/log_w
  ``[B, T, H, N]`` (the kernel alone: no projections), as shipped: its backward keeps the inputs and
  one state per segment and rebuilds each segment's intermediates (``recompute=True``).
- ``finch-autograd``: the same kernel with ``recompute=False``: plain autograd, which keeps every
  intra-chunk tensor for backward (what the kernel did before it recomputed segments).
- ``eagle``: the same kernel with a decay constant in time (``log_w`` of shape ``[H, N]``).
- ``finch-triton`` / ``eagle-triton``: the Triton kernels (``eaglefinch.ops.triton``) on the same
  inputs; CUDA, or CPU under ``TRITON_INTERPRET=1`` (correctness only: the interpreter is slow).
- ``fla-rwkv6``: flash-linear-attention's ``chunk_rwkv6`` (``pip install fla-core``) on the same
  Finch inputs, ``[B, T, H, N]`` with ``scale=1`` (the RWKV-6 convention); CUDA only.
- ``attention``: ``torch.nn.functional.scaled_dot_product_attention`` (causal) on q/k/v
  ``[B, H, T, N]``, forced onto the FlashAttention backend where it is available (the backend
  that ran is recorded), else PyTorch's default choice.
- ``mamba``: Hugging Face transformers' ``MambaMixer`` (d_model = H*N, state 16, expand 2,
  conv 4) with ``mambapy``'s parallel scan where installed; this includes its projections and
  convolution, as the mixer has no scan-only entry point on CPU.

Every (contender, T, mode) runs in a fresh Python process: after a small warm-up call the process
high-water mark (``VmHWM``) is the baseline; the point's peak memory is the high-water mark after
one call minus that baseline, so it counts the inputs, the outputs, saved activations and gradients
(on CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the inputs). The time is
the median of further calls (wall and CPU time; a call over 5 s is timed once). Forward runs under
``torch.no_grad``; forward+backward backpropagates ``y.sum()`` to every input. A point whose time
or memory, extrapolated from the previous T, exceeds ``--max-seconds`` or half the free memory is
skipped (and listed as skipped) unless ``--no-skip``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from eaglefinch.errors import ConfigError
from eaglefinch.experiments import MALLOC_ENV, environment_stamp, write_json_atomic
from eaglefinch.ops.wkv_chunked import RECOMPUTE_SEGMENT

HELP = "time and peak memory of Finch/Eagle WKV, softmax attention and Mamba vs T (paper Figures 6, 7)"
CONTENDERS: tuple[str, ...] = (
    "finch",
    "finch-autograd",
    "eagle",
    "finch-triton",
    "eagle-triton",
    "fla-rwkv6",
    "attention",
    "mamba",
)
LABELS = {
    "finch": "Finch WKV (chunked, torch)",
    "finch-autograd": "Finch WKV (chunked, plain autograd)",
    "eagle": "Eagle WKV (chunked, torch)",
    "finch-triton": "Finch WKV (Triton)",
    "eagle-triton": "Eagle WKV (Triton)",
    "fla-rwkv6": "fla chunk_rwkv6",
    "attention": "softmax attention (SDPA)",
    "mamba": "Mamba mixer",
}
CPU_CONTENDERS = ("finch", "finch-autograd", "eagle", "attention", "mamba")
CUDA_CONTENDERS = ("finch-triton", "eagle-triton", "finch", "fla-rwkv6", "attention", "mamba")
MODES = ("fwd", "fwdbwd")
DEFAULT_OUT = Path("benchmarks/results/kernels")
# Time grows about linearly in T for the recurrent kernels and quadratically for attention.
GROWTH_EXPONENT = {"attention": 2.0}
CPU_CONFIG = {"batch": 1, "n_head": 12, "head_size": 64, "dtype": "float32"}
CUDA_CONFIG = {"batch": 8, "n_head": 64, "head_size": 64, "dtype": "bfloat16"}  # d_model 4096, as the paper
MALLOC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument(
        "--contenders",
        default=None,
        help=f"subset of {','.join(CONTENDERS)} (default: {','.join(CPU_CONTENDERS)} on CPU, "
        f"{','.join(CUDA_CONTENDERS)} on CUDA)",
    )
    parser.add_argument("--seq-lens", type=_int_list, default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the paper's configuration")
    parser.add_argument("--batch", type=int, default=None, help="override the device's batch size")
    parser.add_argument("--n-head", type=int, default=None, help="override the device's head count")
    parser.add_argument("--head-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the memory call")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="skip points estimated to take longer"
    )
    parser.add_argument("--no-skip", action="store_true", help="run every point, however slow")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each child")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


# ---------------------------------------------------------------- the child: one point per process


def _hwm_bytes() -> int:
    """The process's peak resident set size (``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmHWM not found in /proc/self/status")


def make_point(contender: str, T: int, cfg: dict, device: str, gen: torch.Generator):
    """Build ``(call, inputs, info)``: ``call()`` returns the output; ``inputs`` need gradients."""
    B, H, N = cfg["batch"], cfg["n_head"], cfg["head_size"]
    dtype = getattr(torch, cfg["dtype"])
    info: dict = {}

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()

    if contender in ("finch", "finch-autograd", "eagle", "finch-triton", "eagle-triton", "fla-rwkv6"):
        r, k, v = randn(B, T, H, N), randn(B, T, H, N, scale=N**-0.5), randn(B, T, H, N)
        u = randn(H, N, scale=0.1)
        # log_w = -exp(w), w ~ N(-1, 0.5): per-token decays near the trained models' range. The
        # kernel's own input is log_w (as attention's are q, k, v): made here, outside the call.
        shape = (H, N) if contender.startswith("eagle") else (B, T, H, N)
        with torch.no_grad():
            log_w = -torch.exp(randn(*shape, scale=0.5) - 1.0)
        log_w.requires_grad_()
        inputs = [r, k, v, log_w, u]
        if contender.endswith("-triton"):
            from eaglefinch.ops.triton import wkv_chunked_triton

            return (lambda: wkv_chunked_triton(r, k, v, log_w, u)[0]), inputs, info
        if contender == "fla-rwkv6":
            return _fla_rwkv6_call(r, k, v, log_w, u, info), inputs, info
        from eaglefinch.ops.wkv_chunked import wkv_chunked

        recompute = contender != "finch-autograd"
        return (lambda: wkv_chunked(r, k, v, log_w, u, recompute=recompute)[0]), inputs, info
    if contender == "attention":
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q, k, v = randn(B, H, T, N, scale=N**-0.25), randn(B, H, T, N, scale=N**-0.25), randn(B, H, T, N)
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                F.scaled_dot_product_attention(
                    q[:, :, :8].detach(), k[:, :, :8].detach(), v[:, :, :8].detach(), is_causal=True
                )
            backend = [SDPBackend.FLASH_ATTENTION]
            info["sdpa_backend"] = "flash attention"
        except RuntimeError:
            backend = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
            info["sdpa_backend"] = "default (flash attention unavailable)"
        info["flash_sdp_enabled"] = bool(torch.backends.cuda.flash_sdp_enabled())
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()

        def call():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return call, [q, k, v], info
    if contender == "mamba":
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer

        try:
            import mambapy  # noqa: F401

            use_mambapy = True
        except ImportError:
            use_mambapy = False
        info["mambapy"] = use_mambapy
        config = MambaConfig(
            hidden_size=H * N,
            state_size=16,
            expand=2,
            conv_kernel=4,
            num_hidden_layers=1,
            use_mambapy=use_mambapy,
            vocab_size=1,
        )
        mixer = MambaMixer(config, layer_idx=0).to(device=device, dtype=dtype)
        x = randn(B, T, H * N)
        return (lambda: mixer(x)), [x], info
    raise ConfigError(f"unknown contender {contender!r}; choose from {', '.join(CONTENDERS)}")


def _fla_rwkv6_call(r, k, v, log_w, u, info: dict):
    """flash-linear-attention's chunked RWKV-6 on our [B, T, H, N] layout, whichever of its
    signatures (``head_first`` appeared and changed default between releases) is installed."""
    import inspect
    from importlib.metadata import version

    from fla.ops.rwkv6 import chunk_rwkv6

    info["fla"] = version("fla-core") if _has_dist("fla-core") else version("flash-linear-attention")
    params = inspect.signature(chunk_rwkv6).parameters
    layout = {"head_first": False} if "head_first" in params else {}
    return lambda: chunk_rwkv6(r, k, v, log_w, u, scale=1.0, **layout)[0]


def _has_dist(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def measure(contender: str, T: int, mode: str, cfg: dict, device: str, repeats: int) -> dict:
    """One point, in this process: peak memory above the baseline, and the median time of a call."""
    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(0)

    def once(call, inputs) -> tuple[float, float]:
        """Wall and CPU seconds of one call (CPU time, summed over threads, is the figure that a
        machine shared with other jobs distorts least)."""
        if cuda:
            torch.cuda.synchronize(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                call()
        else:
            call().float().sum().backward()
        if cuda:
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for x in inputs:
            x.grad = None
        return wall, cpu

    warm_call, warm_inputs, _ = make_point(contender, 64, cfg, device, gen)  # loads every code path
    once(warm_call, warm_inputs)
    del warm_call, warm_inputs
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _hwm_bytes()
    call, inputs, info = make_point(contender, T, cfg, device, gen)
    input_bytes = sum(x.numel() * x.element_size() for x in inputs)
    first, first_cpu = once(call, inputs)
    peak = (torch.cuda.max_memory_allocated(device) if cuda else _hwm_bytes()) - base
    timed = [once(call, inputs) for _ in range(repeats)] if first < 5.0 else [(first, first_cpu)]
    return {
        "contender": contender,
        "T": T,
        "mode": mode,
        "seconds": statistics.median(t for t, _ in timed),
        "cpu_seconds": statistics.median(c for _, c in timed),
        "seconds_first_call": first,
        "timed_calls": len(timed),
        "peak_bytes": int(peak),
        "input_bytes": int(input_bytes),
        **info,
    }


def _child_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = measure(spec["contender"], spec["T"], spec["mode"], spec["cfg"], spec["device"], spec["repeats"])
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- the parent: the sweep


def run_point(spec: dict, timeout: float | None) -> dict:
    """Run one point in a fresh interpreter; returns its result or an ``error`` record."""
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in MALLOC_DEFAULTS.items()}}
    cmd = [sys.executable, "-m", "eaglefinch.experiments.kernels", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**_key(spec), "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**_key(spec), "error": f"exit {proc.returncode}: {tail}"}


def _key(spec: dict) -> dict:
    return {"contender": spec["contender"], "T": spec["T"], "mode": spec["mode"]}


def _available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def skip_reason(contender: str, prev: dict | None, T: int, max_seconds: float) -> str | None:
    """Why the point at ``T`` is skipped, from the last measured point of the same series, or None."""
    if prev is None or "error" in prev:
        return None if prev is None else "the previous length failed"
    ratio = T / prev["T"]
    est_time = prev["seconds_first_call"] * ratio ** GROWTH_EXPONENT.get(contender, 1.0)
    est_mem = prev["peak_bytes"] * ratio
    if est_time > max_seconds:
        return f"estimated {est_time:.0f} s > --max-seconds {max_seconds:.0f}"
    if est_mem > _available_bytes() / 2:
        return f"estimated {est_mem / 2**30:.1f} GiB > half the free memory"
    return None


def plot(path: Path, points: list[dict], key: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if any(p["mode"] == m and key in p for p in points)] or ["fwd"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, mode in zip(axes, modes, strict=True):
        for contender in CONTENDERS:
            pts = sorted(
                (p["T"], p[key])
                for p in points
                if p["contender"] == contender
                and p["mode"] == mode
                and "error" not in p
                and "skipped" not in p
                and p[key] > 0
            )  # log axes
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=LABELS[contender])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title({"fwd": "forward", "fwdbwd": "forward + backward"}[mode], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if axes[-1].get_legend_handles_labels()[0]:  # nothing to draw when no point could be measured
        axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def goals(points: list[dict]) -> list[dict]:
    """Measured ratios per (WKV kernel, T >= 2048, mode): the paper's claims for Finch (memory below
    attention's and Mamba's; from T = 4096, time below attention's), and for the Triton kernel its
    time and memory against fla's chunk_rwkv6 and its speed-up over the torch chunked form."""
    table = {
        (p["contender"], p["T"], p["mode"]): p for p in points if "error" not in p and "skipped" not in p
    }
    rows = []
    for (c, T, mode), f in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if c not in ("finch", "finch-triton") or T < 2048:
            continue
        row = {"kernel": c, "T": T, "mode": mode}
        peers = (
            ("attention", "mamba", "finch-autograd") if c == "finch" else ("attention", "mamba", "fla-rwkv6")
        )
        for peer in peers:
            p = table.get((peer, T, mode))
            if p:
                row[f"memory_over_{peer}"] = f["peak_bytes"] / max(p["peak_bytes"], 1)
                row[f"time_over_{peer}"] = f["seconds"] / p["seconds"]
        if "memory_over_attention" in row:
            row["less_memory_than_attention"] = row["memory_over_attention"] < 1
        if "memory_over_mamba" in row:
            row["less_memory_than_mamba"] = row["memory_over_mamba"] < 1
        if T >= 4096 and "time_over_attention" in row:
            row["faster_than_attention"] = row["time_over_attention"] < 1
        if c == "finch-triton":
            if "time_over_fla-rwkv6" in row:
                row["at_most_fla_time_and_memory"] = (
                    row["time_over_fla-rwkv6"] <= 1 and row["memory_over_fla-rwkv6"] <= 1
                )
            torch_path = table.get(("finch", T, mode))
            if torch_path:
                row["speedup_over_torch_chunked"] = torch_path["seconds"] / f["seconds"]
                row["at_least_5x_torch_chunked"] = row["speedup_over_torch_chunked"] >= 5
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    cuda = args.device.startswith("cuda")
    chosen = args.contenders or ",".join(CUDA_CONTENDERS if cuda else CPU_CONTENDERS)
    contenders = [c.strip() for c in chosen.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not contenders or any(c not in CONTENDERS for c in contenders):
        raise ConfigError(f"--contenders: choose from {', '.join(CONTENDERS)}")
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"--modes: choose from {', '.join(MODES)}")
    if not args.seq_lens or min(args.seq_lens) < 64:
        raise ConfigError("--seq-lens: lengths of at least 64")
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device available")
    if not cuda and args.device != "cpu":
        raise ConfigError(f"--device must be cpu or cuda[:i], got {args.device!r}")
    if "mamba" in contenders:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("skipping mamba: needs transformers (pip install 'eaglefinch[mamba]')", file=sys.stderr)
            contenders.remove("mamba")
    for name in [c for c in contenders if c.endswith("-triton")]:
        if importlib.util.find_spec("triton") is None:
            print(f"skipping {name}: needs triton (pip install 'eaglefinch[gpu]')", file=sys.stderr)
            contenders.remove(name)
        elif not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            print(
                f"skipping {name}: on CPU it needs TRITON_INTERPRET=1 (Triton's interpreter)", file=sys.stderr
            )
            contenders.remove(name)
    if "fla-rwkv6" in contenders and (not cuda or importlib.util.find_spec("fla") is None):
        print("skipping fla-rwkv6: needs a CUDA device and fla (pip install fla-core)", file=sys.stderr)
        contenders.remove("fla-rwkv6")
    cfg = dict(CUDA_CONFIG if cuda else CPU_CONFIG)
    for name in ("batch", "n_head", "head_size"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    points: list[dict] = []
    for mode in modes:
        for contender in contenders:
            prev = None
            for T in sorted(args.seq_lens):
                reason = None if args.no_skip else skip_reason(contender, prev, T, args.max_seconds)
                if reason:
                    point = {"contender": contender, "T": T, "mode": mode, "skipped": reason}
                else:
                    spec = {
                        "contender": contender,
                        "T": T,
                        "mode": mode,
                        "cfg": cfg,
                        "device": args.device,
                        "repeats": args.repeats,
                        "threads": args.threads,
                    }
                    point = run_point(spec, None if args.no_skip else 10 * args.max_seconds)
                    prev = point
                points.append(point)
                shown = (
                    point.get("error")
                    or point.get("skipped")
                    or (
                        f"{point['seconds']:.3f} s ({point['cpu_seconds']:.3f} s CPU), "
                        f"{point['peak_bytes'] / 2**20:.0f} MiB"
                    )
                )
                print(f"{mode:6s} {contender:16s} T={T:6d}: {shown}", flush=True)
    stamp = environment_stamp(args.device)
    stamp["malloc_env"] = {k: os.environ.get(k, MALLOC_DEFAULTS[k]) for k in MALLOC_ENV}
    result = {
        "environment": stamp,
        "config": {
            **cfg,
            "d_model": cfg["n_head"] * cfg["head_size"],
            "device": args.device,
            "recompute_segment": RECOMPUTE_SEGMENT,
            "threads": args.threads,
        },
        "points": points,
        "goals": goals(points),
    }
    tag = "cuda" if cuda else "cpu"
    out = args.out
    write_json_atomic(out / f"kernels_{tag}.json", result)
    title = (
        f"{args.device}: B={cfg['batch']}, d_model {cfg['n_head'] * cfg['head_size']}, "
        f"{cfg['n_head']} heads of {cfg['head_size']}, {cfg['dtype']}"
    )
    plot(out / f"kernels_time_{tag}.png", points, "seconds", "seconds per call (wall)", title)
    plot(
        out / f"kernels_memory_{tag}.png",
        [{**p, "mib": p["peak_bytes"] / 2**20} for p in points if "peak_bytes" in p],
        "mib",
        "peak MiB above baseline",
        title,
    )
    for row in result["goals"]:
        print(json.dumps(row))
    print(f"wrote {out / f'kernels_{tag}.json'} and two PNGs")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
