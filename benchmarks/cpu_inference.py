"""CPU inference against the CPU anchors, in one run: eaglefinch, the official ``rwkv`` package and
llama.cpp (through llama-cpp-python, on a GGUF file ``eaglefinch export`` writes).

On random official-format checkpoints (vocabulary 65536) of Finch L12-D768 and Eagle L24-D1024,
bf16 weights (as the released models), at 1 and 2 threads:

* single-stream decode, tokens/s: eaglefinch's ``DecodeModel`` on the bf16 model (``exact``) and
  with fp16, int8 and w8a8 weights; the package's ``cpu bf16`` and ``cpu fp32`` (its best is the
  reference); llama.cpp with f16 and q8_0 files (Finch only: llama.cpp has no RWKV-5 graph). Each
  also as a share of the read-bandwidth limit (bytes of weights per token against a large-buffer
  read measured in the same run);
* prefill of 512 and 2048 tokens, seconds: eaglefinch's chunked forward (fp32 and bf16 models, with
  the products of the exact decoder's packed matrices, as ``generate`` prefills), the
  package's sequence forward (``cpu fp32``, ``cpu bf16``), llama.cpp's batched eval (f16, q8_0).

Decode contenders run in interleaved rounds (every round times each once, the order rotating), so a
busy machine slows them alike; medians are reported, with ratios to the package's best and to
llama.cpp f16 at the same thread count. The CPU model, its flags and the versions are recorded.

    nice python benchmarks/cpu_inference.py                 # both shapes, 1 and 2 threads
    nice python benchmarks/cpu_inference.py --quick         # Finch only, 2 threads, short

Writes ``benchmarks/results/cpu_inference.json`` and ``cpu_inference.png``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_malloc_env  # noqa: E402

ensure_malloc_env()
os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402
from common import RESULTS, environment, write_json  # noqa: E402
from decode_speed import bandwidth, interleaved, matrix_bytes, our_stepper, package_stepper  # noqa: E402

from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.model.decode import DecodeModel  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

PRESETS = {"finch-l12-d768": "finch-l12-d768", "eagle-l24-d1024": "eagle-0.4b"}
PACKAGE = ("cpu bf16", "cpu fp32")
LLAMA_TYPES = ("f16", "q8_0")
OURS = {"exact": "exact", "fp16": "fp16", "int8": "int8", "w8a8": "w8a8"}


def llama_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaRunner:
    """One llama.cpp context on a GGUF file: a decode step and a prefill, its state reset between."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512, n_threads=threads,
            n_threads_batch=threads, logits_all=False, verbose=False,
        )  # fmt: skip
        self.n_ctx = n_ctx

    def step(self) -> None:
        if self.llm.n_tokens >= self.n_ctx - 1:
            self.llm.reset()
        self.llm.eval([17])

    def prefill(self, tokens: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(tokens)

    def close(self) -> None:
        self.llm.close()


def shares(tokens_per_s: float, nbytes: float, read_GBps: float) -> float:
    return tokens_per_s * nbytes / (read_GBps * 1e9)


def run_preset(label: str, args, bandwidths: dict, tmp: Path) -> dict:
    import rwkv.model

    config = RWKVConfig.preset(PRESETS[label])
    print(f"== {label}: {config.arch} L{config.n_layer}-D{config.n_embd}", flush=True)
    state_dict = random_state_dict(config, seed=0, dtype=torch.bfloat16)
    pth = tmp / f"{label}.pth"
    torch.save(state_dict, pth)
    package = {s: rwkv.model.RWKV(model=str(pth), strategy=s, verbose=False) for s in PACKAGE}
    bf16 = model_from_state_dict(state_dict, dtype=torch.bfloat16)
    fp32 = model_from_state_dict(state_dict, dtype=torch.float32)
    decoders = {name: DecodeModel(bf16 if w == "exact" else fp32, weights=w) for name, w in OURS.items()}
    # prefill: each model's exact decoder lends its packed matrices, as in eaglefinch.generate
    prefill_runs = [
        ("eaglefinch fp32", fp32, DecodeModel(fp32)),
        ("eaglefinch bf16", bf16, decoders["exact"]),
    ]
    ggufs: dict[str, Path] = {}
    llama_note = None
    if config.version != "6.0":
        llama_note = "llama.cpp has no RWKV-5 (Eagle) graph"
    elif not llama_available():
        llama_note = "llama-cpp-python is not installed (pip install 'eaglefinch[llamacpp]')"
    else:
        from eaglefinch.export import export_gguf

        ggufs = {t: export_gguf(state_dict, tmp / f"{label}-{t}.gguf", t) for t in LLAMA_TYPES}
    del state_dict
    nbytes = {f"eaglefinch {n}": d.weight_bytes() for n, d in decoders.items()}
    nbytes.update({"rwkv cpu bf16": matrix_bytes(config, 2), "rwkv cpu fp32": matrix_bytes(config, 4)})
    nbytes.update({"llama.cpp f16": matrix_bytes(config, 2), "llama.cpp q8_0": matrix_bytes(config, 34 / 32)})
    result = {"config": config.to_dict(), "llama_cpp": llama_note or "measured", "weight_bytes": nbytes}
    result["decode"], result["prefill"] = {}, {}
    prompts = {T: torch.randint(1, config.vocab_size, (T,), generator=torch.Generator().manual_seed(T))
               for T in args.prefill}  # fmt: skip
    for threads in args.threads:
        torch.set_num_threads(threads)
        key = f"threads={threads}"
        read = bandwidths[key]["read_GBps"]
        llamas = {f"llama.cpp {t}": LlamaRunner(p, threads, max(args.prefill) + 8) for t, p in ggufs.items()}
        contenders = {f"rwkv {s}": package_stepper(m) for s, m in package.items()}
        contenders.update({f"eaglefinch {n}": our_stepper(d) for n, d in decoders.items()})
        contenders.update({n: r.step for n, r in llamas.items()})
        times = interleaved(contenders, args.steps, args.rounds)
        decode = {}
        for name, seconds in times.items():
            rate = statistics.median(1 / s for s in seconds)
            decode[name] = {"tokens_per_s": rate, "share_of_read_bandwidth": shares(rate, nbytes[name], read)}
        best_package = max(decode[f"rwkv {s}"]["tokens_per_s"] for s in PACKAGE)
        for name, row in decode.items():
            row["ratio_to_package_best"] = row["tokens_per_s"] / best_package
            if "llama.cpp f16" in decode:
                row["ratio_to_llama_cpp_f16"] = row["tokens_per_s"] / decode["llama.cpp f16"]["tokens_per_s"]
            if "llama.cpp q8_0" in decode:
                row["ratio_to_llama_cpp_q8_0"] = (
                    row["tokens_per_s"] / decode["llama.cpp q8_0"]["tokens_per_s"]
                )
            shown = f"{row['tokens_per_s']:7.1f} tok/s  x{row['ratio_to_package_best']:.2f} of the package"
            print(
                f"   {key} decode {name:22s} {shown}, {row['share_of_read_bandwidth']:.0%} of bandwidth",
                flush=True,
            )
        result["decode"][key] = decode
        prefill = {}
        for T, prompt in prompts.items():
            rows = {}
            with torch.no_grad():
                for name, model, decoder in prefill_runs:
                    with decoder.products_for(model):  # as generate's prefill runs the prompt
                        model(prompt[None, :64], last_only=True)  # warm
                        runs = []
                        for _ in range(args.prefill_repeats):
                            t = time.perf_counter()
                            model(prompt[None], last_only=True)
                            runs.append(time.perf_counter() - t)
                    rows[name] = min(runs)
            for s, m in package.items():
                t = time.perf_counter()
                m.forward(prompt.tolist(), None)
                rows[f"rwkv {s}"] = time.perf_counter() - t
            for name, runner in llamas.items():
                runner.prefill(prompt[:64].tolist())  # warm
                runs = []
                for _ in range(args.prefill_repeats):
                    t = time.perf_counter()
                    runner.prefill(prompt.tolist())
                    runs.append(time.perf_counter() - t)
                rows[name] = min(runs)
            best_package = min(rows[f"rwkv {s}"] for s in PACKAGE)
            prefill[f"T={T}"] = {}
            for name, sec in rows.items():
                row = {
                    "seconds": sec,
                    "tokens_per_s": T / sec,
                    "speedup_over_package_best": best_package / sec,
                }
                if "llama.cpp f16" in rows:
                    row["speedup_over_llama_cpp_f16"] = rows["llama.cpp f16"] / sec
                prefill[f"T={T}"][name] = row
            for name, row in prefill[f"T={T}"].items():
                print(f"   {key} prefill T={T} {name:18s} {row['seconds']:7.2f} s "
                      f"x{row['speedup_over_package_best']:.2f} of the package", flush=True)  # fmt: skip
        result["prefill"][key] = prefill
        for runner in llamas.values():
            runner.close()
    del package, decoders, prefill_runs, fp32, bf16
    gc.collect()
    return result


def floors(results: dict) -> list[dict]:
    """The issue's goals, as measured ratios per preset and thread count."""
    rows = []
    for label, r in results["presets"].items():
        for key, d in r["decode"].items():
            row = {"preset": label, "threads": key}
            row["exact_over_package_best"] = d["eaglefinch exact"]["ratio_to_package_best"]
            row["exact_at_least_1.5x_package"] = row["exact_over_package_best"] >= 1.5
            row["fp16_share_of_read_bandwidth"] = d["eaglefinch fp16"]["share_of_read_bandwidth"]
            row["fp16_at_least_70pct_bandwidth"] = row["fp16_share_of_read_bandwidth"] >= 0.7
            if "llama.cpp f16" in d:
                row["exact_over_llama_cpp_f16"] = d["eaglefinch exact"]["ratio_to_llama_cpp_f16"]
                row["int8_over_llama_cpp_q8_0"] = d["eaglefinch int8"]["ratio_to_llama_cpp_q8_0"]
                row["w8a8_over_llama_cpp_q8_0"] = d["eaglefinch w8a8"]["ratio_to_llama_cpp_q8_0"]
            for T, p in r["prefill"][key].items():
                best = max(p["eaglefinch fp32"]["speedup_over_package_best"],
                           p["eaglefinch bf16"]["speedup_over_package_best"])  # fmt: skip
                row[f"prefill_{T}_over_package_best"] = best
                if "llama.cpp f16" in p:
                    row[f"prefill_{T}_over_llama_cpp_f16"] = max(
                        p["eaglefinch fp32"]["speedup_over_llama_cpp_f16"],
                        p["eaglefinch bf16"]["speedup_over_llama_cpp_f16"],
                    )
            rows.append(row)
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(results["presets"])
    fig, axes = plt.subplots(1, len(presets), figsize=(6.5 * len(presets), 4.5), squeeze=False)
    for ax, label in zip(axes[0], presets, strict=True):
        decode = results["presets"][label]["decode"]
        keys = list(decode)
        names = list(decode[keys[0]])
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            values = [decode[key][n]["tokens_per_s"] for n in names]
            ax.bar([i + j * width for i in range(len(names))], values, width, label=key)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("single-stream decode, tokens/s")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"CPU decode: {results['environment']['cpu']}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8, help="tokens per timed group")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prefill", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--prefill-repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="Finch only, 2 threads, short runs")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.threads, args.steps, args.rounds = ["finch-l12-d768"], [2], 4, 2
        args.prefill, args.prefill_repeats = [512], 1
    results = {"environment": environment(), "settings": vars(args), "bandwidth": {}, "presets": {}}
    results["environment"]["llama_cpp_python"] = _version("llama_cpp_python")
    results["environment"]["gguf"] = _version("gguf")
    for threads in args.threads:
        results["bandwidth"][f"threads={threads}"] = bandwidth(threads)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.presets:
            results["presets"][label] = run_preset(label, args, results["bandwidth"], Path(tmp))
    results["floors"] = floors(results)
    results["wall_seconds"] = time.time() - started
    results["load_average_at_end"] = os.getloadavg()
    out = write_json("cpu_inference", {k: v for k, v in results.items() if k != "environment"})
    plot(results, RESULTS / "cpu_inference.png")
    for row in results["floors"]:
        print(row)
    print(f"wrote {out} and cpu_inference.png")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
