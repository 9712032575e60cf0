"""Fine-tuning speed and memory on this machine (CPU): one optimiser step per method.

Each contender runs in its own fresh process (same allocator settings, same nice level) and builds
what ``eaglefinch finetune`` builds for its ``--method`` (``finetune.methods.adapt``, the training
loop's ``LossModule`` and ``make_optimizer``) around a Finch L12-D768 (World vocabulary), then times
steps of batch 1 x context 1024 in fp32: forward + backward + gradient clipping + AdamW. The
model's weights are rounded to bfloat16 values first, as a released checkpoint holds them; lora and
state tuning then keep their frozen weights in bfloat16 (``--frozen-dtype auto``, lossless for such
weights, see ``eaglefinch.finetune.frozen``), and ``lora-r64-fp32-frozen`` keeps them in float32.

* ``full``: every weight trained (the official parameter groups);
* ``lora-r16``, ``lora-r64``: peft adapters on the time-mix and channel-mix projections;
* ``state``: the initial WKV state of every layer only;
* ``forward-backward``: the reference for state tuning's goal: forward and backward of the same
  loss with every weight requiring gradients, no optimiser, everything kept for the backward.

Each method runs twice: with ``eaglefinch finetune``'s defaults (each block recomputed in the
backward, the head and loss 256 tokens at a time), and with every activation kept (``-kept``,
``--no-grad-cp --head-chunk 0``, the defaults of ``eaglefinch train``).

Peak memory is the process's peak resident set (``ru_maxrss``) over the whole run (model, optimiser
state, the steps), from a second, two-step run of each contender whose allocator returns freed
blocks of 1 MB or more to the system (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` = 1 MB),
so that it counts memory in use rather than memory kept for reuse; the timed run's own peak, under
the speed settings of the other benchmarks, is recorded beside it (``speed_pass_peak_rss_mb``).

    nice python benchmarks/finetune_speed.py [--quick]

writes ``benchmarks/results/finetune_speed.json`` (``--quick``: a 2-layer model at context 256).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_malloc_env, write_json  # noqa: E402

METHODS = {
    "full": {"method": "full"},
    "lora-r16": {"method": "lora", "rank": 16},
    "lora-r64": {"method": "lora", "rank": 64},
    "state": {"method": "state"},
    "lora-r64-fp32-frozen": {"method": "lora", "rank": 64, "frozen": "fp32"},
}
# ``eaglefinch finetune``'s defaults (recomputed blocks, the head and loss 256 tokens at a time),
# then every method with everything kept for the backward (``--no-grad-cp --head-chunk 0``).
MEMORY_OPTIONS = {"": {"grad_cp": True, "head_chunk": 256}, "-kept": {"grad_cp": False, "head_chunk": 0}}
CONTENDERS = {
    name + suffix: {**spec, **options}
    for suffix, options in MEMORY_OPTIONS.items()
    for name, spec in METHODS.items()
}
CONTENDERS["forward-backward"] = {"method": "forward-backward", "grad_cp": False, "head_chunk": 0}


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def build(spec: dict):
    """What ``eaglefinch finetune`` builds for ``spec``: (model, loss module, optimiser or None, config)."""
    import torch

    from eaglefinch import RWKV, RWKVConfig
    from eaglefinch.finetune.methods import adapt, store_frozen_weights
    from eaglefinch.train.loop import LossModule, TrainConfig
    from eaglefinch.train.optim import make_optimizer, set_lr

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = RWKVConfig.preset("finch-l12-d768").replace(n_layer=spec["n_layer"])
    if spec.get("checkpoint"):  # as `eaglefinch finetune --model` loads it
        from eaglefinch.train.loop import build_model

        model = build_model(
            TrainConfig(data="-", out="-", steps=1, init_from=spec["checkpoint"]), None, None, None
        )
    else:
        model = RWKV(config)
        with torch.no_grad():
            for param in model.parameters():  # the values a bf16 checkpoint holds
                param.copy_(param.bfloat16())
    model.set_grad_checkpointing(spec["grad_cp"])
    method = spec["method"]
    if method == "forward-backward":
        module, optimizer = LossModule(model, l2wrap=1e-4), None
    else:
        options = TrainConfig(
            data="-", out="-", steps=1, init_from="-", method=method, lora_rank=spec.get("rank", 16),
            lora_alpha=2.0 * spec.get("rank", 16),
        )  # fmt: skip
        adapted = adapt(model, method, options)
        if method != "full":
            store_frozen_weights(adapted, spec.get("frozen", "auto"))
        module = LossModule(adapted.model, 1e-4, adapted.initial_state, head_chunk=spec["head_chunk"])
        optimizer = make_optimizer(module, 1e-4, weight_decay=0.0)
        set_lr(optimizer, 1e-4)
    return model, module, optimizer, config


def worker(spec: dict) -> dict:
    import torch

    model, module, optimizer, config = build(spec)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(1, config.vocab_size, (1, spec["ctx"] + 1), generator=gen)
    inputs, targets = data[:, :-1], data[:, 1:]
    built_mb = _rss_mb()

    def step() -> float:
        start = time.perf_counter()
        loss = module(inputs, targets)
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
        module.zero_grad(set_to_none=optimizer is not None)  # forward-backward keeps its grad buffers
        return time.perf_counter() - start

    times = [step() for _ in range(spec["steps"])]
    timed = times[1:] if len(times) > 1 else times
    median = statistics.median(timed)
    return {
        **spec,
        "trained_parameters": trained,
        "total_parameters": model.num_parameters(),
        "step_seconds": times,
        "median_step_seconds": median,
        "tokens_per_second": spec["ctx"] / median,
        "rss_after_build_mb": built_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# The speed pass keeps freed memory in the process (fast, as the other benchmarks run); its peak
# RSS then counts what the allocator retained as well as what is in use. The memory pass hands
# every block of 1 MB or more back to the system when freed, so its peak RSS is what the step needs.
MEMORY_PASS_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20)}


def run_contender(name: str, spec: dict, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return {"name": name, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, context 256 (checks the script)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per contender (the first is warm-up)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    ensure_malloc_env()
    base = {"n_layer": 2 if args.quick else 12, "ctx": 256 if args.quick else 1024}
    base.update(threads=args.threads, steps=args.steps)
    results = []
    for name, spec in CONTENDERS.items():
        result = run_contender(name, {**base, **spec})
        memory = run_contender(name, {**base, **spec, "steps": 2}, MEMORY_PASS_ENV)
        result["speed_pass_peak_rss_mb"] = result["peak_rss_mb"]
        result["peak_rss_mb"] = memory["peak_rss_mb"]
        result["memory_pass"] = {k: memory[k] for k in ("peak_rss_mb", "rss_after_build_mb", "step_seconds")}
        results.append(result)
        print(
            f"{name:17s} {result['tokens_per_second']:7.1f} tokens/s"
            f"  step {result['median_step_seconds']:6.2f} s"
            f"  peak {result['peak_rss_mb']:7.0f} MB  ({result['trained_parameters']:,} trained)",
            flush=True,
        )
    by = {r["name"]: r for r in results}
    tuned = ("lora-r16", "lora-r64", "state")
    fb = by["forward-backward"]["median_step_seconds"]
    summary = {
        "peak_memory_vs_full": {n: by[n]["peak_rss_mb"] / by["full"]["peak_rss_mb"] for n in tuned},
        "peak_memory_vs_full_everything_kept": {
            n: by[n + "-kept"]["peak_rss_mb"] / by["full-kept"]["peak_rss_mb"] for n in tuned
        },
        "lora-r64_frozen_in_fp32_vs_full": by["lora-r64-fp32-frozen"]["peak_rss_mb"]
        / by["full"]["peak_rss_mb"],
        "state_step_vs_forward_backward": by["state"]["median_step_seconds"] / fb,
        "state_kept_step_vs_forward_backward": by["state-kept"]["median_step_seconds"] / fb,
        "step_vs_forward_backward": {n: r["median_step_seconds"] / fb for n, r in by.items()},
        "goals": {"memory_vs_full_at_most": 0.40, "state_step_vs_forward_backward_at_most": 1.2},
    }
    summary["goals_met"] = {
        "memory": all(v <= 0.40 for v in summary["peak_memory_vs_full"].values()),
        "state_step": summary["state_step_vs_forward_backward"] <= 1.2,
    }
    print(json.dumps(summary, indent=1))
    path = write_json(
        "finetune_speed" + ("_quick" if args.quick else ""),
        {
            "benchmark": "finetune_speed",
            "command": "nice python benchmarks/finetune_speed.py" + (" --quick" if args.quick else ""),
            "model": f"finch L{base['n_layer']}-D768 V65536, fp32, batch 1 x {base['ctx']}",
            "summary": summary,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
