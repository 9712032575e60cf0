"""Decoding speed on CPU against the official ``rwkv`` package, measured in one run.

For each model shape (random official-format checkpoints, vocabulary 65536) and each thread count:

* single-stream decoding, tokens/s: the package's ``cpu fp32``, ``cpu bf16`` and ``cpu fp32i8``
  strategies, our model's plain T=1 forward, and ``DecodeModel`` with exact fp32, exact bf16, fp16,
  int8 and w8a8 weights; each also as a share of the memory-bandwidth limit (weight bytes read per
  token against the copy and the read bandwidth measured in the same run);
* the accuracy of the approximate decoders: from the exact fp32 decoder's state at each of 32
  steps, one step's logits against the exact ones (relative error, same most likely token);
* batched decoding, total tokens/s at batch 1, 4 and 16 (``DecodeModel.step`` on B rows);
* time to first token for a 2,000-token prompt (prefill through the chunked kernel, against the
  package's sequence forward), with the two last-token logits compared as a sanity check.

Contenders are measured in interleaved rounds (every round times every contender once, in a
rotating order), so that a busy machine slows all of them alike; medians and bests are reported.
The script re-executes itself with the allocator settings of SPEC.md ("Measuring") and records them.

Usage::

    nice python benchmarks/decode_speed.py                          # both shapes, 1 and 2 threads
    nice python benchmarks/decode_speed.py --presets finch-l12-d768 --threads 2 --rounds 3 --quick

Writes ``benchmarks/results/decode_speed.json`` and ``decode_speed.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    # glibc reads these at start-up only: run again with them set (every contender shares them)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

os.environ.setdefault("RWKV_JIT_ON", "0")  # the package's TorchScript mode is off by default too
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402

from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.model.decode import DecodeModel  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PRESETS = {"finch-l12-d768": "finch-l12-d768", "eagle-l24-d1024": "eagle-0.4b"}
PACKAGE = ("rwkv cpu fp32", "rwkv cpu bf16", "rwkv cpu fp32i8")
OURS = (
    "eaglefinch exact fp32",
    "eaglefinch exact fp32 transposed",
    "eaglefinch exact bf16",
    "eaglefinch fp16 weights",
    "eaglefinch int8 weights",
    "eaglefinch w8a8",
)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "src", "benchmarks"],
                capture_output=True,
                text=True,
                cwd=REPO,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "unknown", None
    import rwkv

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rwkv_package": getattr(rwkv, "__version__", "0.8.32"),
        "git_commit": commit,
        "git_dirty": dirty,
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "load_average_at_start": os.getloadavg(),
    }


def bandwidth(threads: int, mib: int = 512) -> dict:
    """Copy and read bandwidth of a buffer far larger than the caches, best of 5 (GB/s)."""
    torch.set_num_threads(threads)
    src = torch.ones(mib * 2**18)  # float32
    dst = torch.empty_like(src)
    nbytes = src.numel() * 4
    copy, read = [], []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        copy.append(nbytes / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        src.sum()
        read.append(nbytes / (time.perf_counter() - t) / 1e9)
    return {
        "copy_GBps": max(copy),
        "read_GBps": max(read),
        "buffer_MiB": mib,
        "note": "copy: bytes copied per second (each byte is read once and written once)",
    }


def matrix_bytes(config: RWKVConfig, bytes_per_weight: float) -> float:
    """Weights one token reads: every layer matrix and the head (plus one embedding row)."""
    C, A, F = config.n_embd, config.dim_att, config.dim_ffn
    per_layer = 5 * A * C + 2 * F * C + C * C
    return bytes_per_weight * (config.n_layer * per_layer + config.vocab_size * C + C)


def interleaved(contenders: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every contender, ``rounds`` rounds of ``steps`` calls, order rotating."""
    names = list(contenders)
    for name in names:  # warm up (allocator, first-call paths)
        for _ in range(2):
            contenders[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t = time.perf_counter()
            for _ in range(steps):
                contenders[name]()
            out[name].append((time.perf_counter() - t) / steps)
    return out


def summary(seconds: list[float], tokens_per_call: int = 1) -> dict:
    rates = [tokens_per_call / s for s in seconds]
    return {
        "tokens_per_s_median": statistics.median(rates),
        "tokens_per_s_best": max(rates),
        "tokens_per_s_rounds": rates,
    }


def package_stepper(model) -> Callable[[], None]:
    state = [None]

    def step():
        _, state[0] = model.forward([17], state[0])

    return step


def our_stepper(decoder: DecodeModel, batch: int = 1) -> Callable[[], None]:
    state = decoder.zero_state(batch)
    tokens = torch.full((batch,), 17, dtype=torch.long)

    def step():
        decoder.step(tokens, state)

    return step


def model_stepper(model) -> Callable[[], None]:
    state = [model.zero_state(1)]
    tokens = torch.tensor([[17]])

    def step():
        with torch.no_grad():
            _, state[0] = model(tokens, state[0])

    return step


def one_step_accuracy(decoders: dict[str, DecodeModel], config: RWKVConfig, steps: int = 32) -> dict:
    """Each decoder's one-step logits from the exact fp32 decoder's state, against the exact step.

    A random model amplifies small differences over many steps (its state is chaotic), so every
    step starts from the same exact state: this measures the per-step rounding alone.
    """
    exact = decoders["eaglefinch exact fp32"]
    tokens = torch.randint(1, config.vocab_size, (steps,), generator=torch.Generator().manual_seed(2))
    out = {}
    for name, decoder in decoders.items():
        if name == "eaglefinch exact fp32":
            continue
        state = exact.zero_state(1)
        errors, same = [], 0
        for t in tokens:
            probe = state.clone().to(dtype=decoder.dtype)
            approx = decoder.step(t[None], probe)[0].double()
            ref = exact.step(t[None], state)[0].double()
            errors.append(((approx - ref).norm() / ref.norm()).item())
            same += int(approx.argmax() == ref.argmax())
        out[name] = {
            "relative_error_median": statistics.median(errors),
            "relative_error_max": max(errors),
            "same_top_token": same / steps,
            "steps": steps,
        }
        print(f"   accuracy {name:26s} {out[name]}", flush=True)
    return out


def run_preset(label: str, preset: str, args, bandwidths: dict) -> dict:
    import rwkv.model

    config = RWKVConfig.preset(preset)
    print(f"== {label}: {config.arch} L{config.n_layer}-D{config.n_embd} V{config.vocab_size}", flush=True)
    state_dict = random_state_dict(config, seed=0)
    result: dict = {
        "preset": preset,
        "config": config.to_dict(),
        "single_stream": {},
        "batched": {},
        "time_to_first_token": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save(state_dict, path)
        package = {
            name: rwkv.model.RWKV(model=str(path), strategy=name.removeprefix("rwkv "), verbose=False)
            for name in PACKAGE
        }
    fp32 = model_from_state_dict(state_dict, dtype=torch.float32)
    bf16 = model_from_state_dict(state_dict, dtype=torch.bfloat16)
    del state_dict
    decoders = {
        "eaglefinch exact fp32": DecodeModel(fp32),
        # the default fp32 layout before "onednn" became the default, for the comparison
        "eaglefinch exact fp32 transposed": DecodeModel(fp32, layout="transposed"),
        "eaglefinch exact bf16": DecodeModel(bf16),
        "eaglefinch fp16 weights": DecodeModel(fp32, weights="fp16"),
        "eaglefinch int8 weights": DecodeModel(fp32, weights="int8"),
        "eaglefinch w8a8": DecodeModel(fp32, weights="w8a8"),
    }
    result["one_step_accuracy_vs_exact_fp32"] = one_step_accuracy(decoders, config)
    bytes_per_token = {
        "rwkv cpu fp32": matrix_bytes(config, 4),
        "rwkv cpu bf16": matrix_bytes(config, 2),
        "rwkv cpu fp32i8": matrix_bytes(config, 1),
        "eaglefinch model(T=1) fp32": matrix_bytes(config, 4),
    }
    bytes_per_token.update({name: d.weight_bytes() for name, d in decoders.items()})
    result["weight_bytes_per_token"] = bytes_per_token
    prompt = torch.randint(
        1, config.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(1)
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        key = f"threads={threads}"
        print(f"   {key}: single stream", flush=True)
        contenders = {name: package_stepper(m) for name, m in package.items()}
        contenders["eaglefinch model(T=1) fp32"] = model_stepper(fp32)
        contenders.update({name: our_stepper(d) for name, d in decoders.items()})
        times = interleaved(contenders, args.steps, args.rounds)
        copy = bandwidths[key]["copy_GBps"] * 1e9
        read = bandwidths[key]["read_GBps"] * 1e9
        single = {}
        for name, seconds in times.items():
            s = summary(seconds)
            limit = copy / bytes_per_token[name]
            s["bandwidth_limit_tokens_per_s"] = limit
            s["share_of_bandwidth_limit"] = s["tokens_per_s_median"] / limit
            # reading the weights needs no writes: the read bandwidth is the stricter limit
            s["read_bandwidth_limit_tokens_per_s"] = read / bytes_per_token[name]
            s["share_of_read_bandwidth_limit"] = s["tokens_per_s_median"] * bytes_per_token[name] / read
            single[name] = s
        best_package = max(single[n]["tokens_per_s_median"] for n in PACKAGE)
        for name in single:
            single[name]["ratio_to_best_package_strategy"] = (
                single[name]["tokens_per_s_median"] / best_package
            )
        result["single_stream"][key] = single
        for name, s in single.items():
            print(
                f"      {name:28s} {s['tokens_per_s_median']:7.1f} tok/s "
                f"(best {s['tokens_per_s_best']:6.1f}), "
                f"x{s['ratio_to_best_package_strategy']:.2f} of the package's best, "
                f"{s['share_of_bandwidth_limit']:.0%} of the bandwidth limit",
                flush=True,
            )

        print(f"   {key}: batched", flush=True)
        batched = {}
        for name in args.batched:
            steppers = {f"B={b}": our_stepper(decoders[name], b) for b in args.batches}
            times = interleaved(steppers, max(2, args.steps // 2), args.rounds)
            batched[name] = {b: summary(s, int(b[2:])) for b, s in times.items()}
            line = ", ".join(f"{b} {v['tokens_per_s_median']:.1f}" for b, v in batched[name].items())
            print(f"      {name:28s} total tok/s: {line}", flush=True)
        result["batched"][key] = batched

        print(f"   {key}: time to first token, {args.prompt_len}-token prompt", flush=True)
        ttft = {}
        with torch.no_grad():
            ours_logits = {}
            for name, model in (
                ("eaglefinch fp32 (chunked prefill)", fp32),
                ("eaglefinch bf16 (chunked prefill)", bf16),
            ):
                runs = []
                for _ in range(args.ttft_repeats):
                    t = time.perf_counter()
                    logits, _ = model(prompt[None], last_only=True)
                    int(logits[0, -1].argmax())
                    runs.append(time.perf_counter() - t)
                ours_logits[name] = logits[0, -1]
                ttft[name] = {"seconds_best": min(runs), "seconds_runs": runs}
            for name, model in package.items():
                runs = []
                for _ in range(args.package_ttft_repeats):
                    t = time.perf_counter()
                    logits, _ = model.forward(prompt.tolist(), None)
                    int(logits.argmax())
                    runs.append(time.perf_counter() - t)
                ttft[name] = {"seconds_best": min(runs), "seconds_runs": runs}
                ours = ours_logits[
                    "eaglefinch fp32 (chunked prefill)"
                    if "fp32" in name
                    else "eaglefinch bf16 (chunked prefill)"
                ]
                err = ((ours.double() - logits.double()).abs().max() / logits.double().abs().max()).item()
                ttft[name]["last_logits_relative_difference_to_ours"] = err
        best_package_ttft = min(ttft[n]["seconds_best"] for n in PACKAGE)
        for name in ttft:
            ttft[name]["speedup_over_best_package_strategy"] = best_package_ttft / ttft[name]["seconds_best"]
            print(
                f"      {name:34s} {ttft[name]['seconds_best']:7.2f} s "
                f"(x{ttft[name]['speedup_over_best_package_strategy']:.1f} of the package's best)",
                flush=True,
            )
        result["time_to_first_token"][key] = ttft
    del package, decoders, fp32, bf16
    gc.collect()
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(results["presets"])
    fig, axes = plt.subplots(len(presets), 3, figsize=(17, 4.8 * len(presets)), squeeze=False)
    for row, label in enumerate(presets):
        res = results["presets"][label]
        keys = list(res["single_stream"])
        ax = axes[row][0]
        names = list(res["single_stream"][keys[0]])
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            vals = [res["single_stream"][key][n]["tokens_per_s_median"] for n in names]
            ax.barh([j + i * width for j in range(len(names))], vals, height=width, label=key)
        limit = res["single_stream"][keys[-1]]["eaglefinch exact bf16"]["bandwidth_limit_tokens_per_s"]
        ax.axvline(limit, color="grey", ls="--", lw=1, label=f"bf16 bandwidth limit ({limit:.0f})")
        ax.set_yticks([j + width * (len(keys) - 1) / 2 for j in range(len(names))], names, fontsize=8)
        ax.set_xlabel("tokens/s (median of rounds)")
        ax.set_title(f"{label}: single-stream decoding")
        ax.legend(fontsize=7)
        ax = axes[row][1]
        for key in keys:
            for name, per_b in res["batched"][key].items():
                bs = [int(b[2:]) for b in per_b]
                ax.plot(
                    bs,
                    [v["tokens_per_s_median"] for v in per_b.values()],
                    marker="o",
                    label=f"{name.removeprefix('eaglefinch ')}, {key}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("total tokens/s")
        ax.set_title(f"{label}: batched decoding")
        ax.legend(fontsize=7)
        ax = axes[row][2]
        tnames = list(res["time_to_first_token"][keys[0]])
        for i, key in enumerate(keys):
            vals = [res["time_to_first_token"][key][n]["seconds_best"] for n in tnames]
            ax.barh([j + i * width for j in range(len(tnames))], vals, height=width, label=key)
        ax.set_yticks([j + width * (len(keys) - 1) / 2 for j in range(len(tnames))], tnames, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("seconds (log)")
        ax.set_title(f"{label}: first token after {results['settings']['prompt_len']} tokens")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Decoding on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
        f"load average at start {results['machine']['load_average_at_start'][0]:.1f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8, help="tokens per timed call group")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batched", nargs="+", default=list(OURS), choices=list(OURS))
    parser.add_argument("--prompt-len", type=int, default=2000)
    parser.add_argument("--ttft-repeats", type=int, default=1)
    parser.add_argument("--package-ttft-repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "decode_speed.json")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 steps, 1 round, 256-token prompt"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.prompt_len = 2, 1, 256
    results = {
        "benchmark": "decode_speed",
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "bandwidth": {},
        "presets": {},
    }
    started = time.time()
    for threads in args.threads:
        results["bandwidth"][f"threads={threads}"] = bandwidth(threads)
        print(f"bandwidth, {threads} thread(s): {results['bandwidth'][f'threads={threads}']}", flush=True)
    for label in args.presets:
        results["presets"][label] = run_preset(label, PRESETS[label], args, results["bandwidth"])
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["wall_seconds"] = time.time() - started
    atomic_write(args.out, json.dumps(results, indent=1).encode())
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
