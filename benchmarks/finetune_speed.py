"""Fine-tuning speed and memory on this machine (CPU): one optimiser step per method.

Each contender runs in its own fresh process (same allocator settings, same nice level) and builds
what ``eaglefinch finetune`` builds for its ``--method`` (``finetune.methods.adapt``, the training
loop's ``LossModule`` and ``make_optimizer``) around a Finch L12-D768 (World vocabulary), then times
steps of batch 1 x context 1024 in fp32: forward + backward + gradient clipping + AdamW.

* ``full``: every weight trained (the official parameter groups);
* ``lora-r16``, ``lora-r64``: peft adapters on the time-mix and channel-mix projections;
* ``state``: the initial WKV state of every layer only;
* ``forward-backward``: the reference for state tuning's goal: forward and backward of the same
  loss with every weight requiring gradients, no optimiser.

Peak memory is the process's peak resident set (``ru_maxrss``) over the whole run (model, optimiser
state, the steps); the resident set after building the model and before the first step is recorded
beside it.

    nice python benchmarks/finetune_speed.py [--quick]

writes ``benchmarks/results/finetune_speed.json`` (``--quick``: a 2-layer model at context 256).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_malloc_env, write_json  # noqa: E402

CONTENDERS = {
    "full": {"method": "full"},
    "lora-r16": {"method": "lora", "rank": 16},
    "lora-r64": {"method": "lora", "rank": 64},
    "state": {"method": "state"},
    "forward-backward": {"method": "forward-backward"},
}


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def worker(spec: dict) -> dict:
    import torch

    from eaglefinch import RWKV, RWKVConfig
    from eaglefinch.finetune.methods import adapt
    from eaglefinch.train.loop import LossModule, TrainConfig
    from eaglefinch.train.optim import make_optimizer, set_lr

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = RWKVConfig.preset("finch-l12-d768").replace(n_layer=spec["n_layer"])
    model = RWKV(config)
    method = spec["method"]
    if method == "forward-backward":
        module, optimizer = LossModule(model, l2wrap=1e-4), None
    else:
        options = TrainConfig(
            data="-", out="-", steps=1, init_from="-", method=method, lora_rank=spec.get("rank", 16),
            lora_alpha=2.0 * spec.get("rank", 16),
        )  # fmt: skip
        adapted = adapt(model, method, options)
        module = LossModule(adapted.model, 1e-4, adapted.initial_state)
        optimizer = make_optimizer(module, 1e-4, weight_decay=0.0)
        set_lr(optimizer, 1e-4)
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


def run_contender(name: str, spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
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
        results.append(result)
        print(
            f"{name:17s} {result['tokens_per_second']:7.1f} tokens/s  step {result['median_step_seconds']:6.2f} s"
            f"  peak {result['peak_rss_mb']:7.0f} MB  ({result['trained_parameters']:,} trained)",
            flush=True,
        )
    by = {r["name"]: r for r in results}
    full_peak = by["full"]["peak_rss_mb"]
    summary = {
        "peak_memory_vs_full": {n: by[n]["peak_rss_mb"] / full_peak for n in ("lora-r16", "lora-r64", "state")},
        "state_step_vs_forward_backward": by["state"]["median_step_seconds"]
        / by["forward-backward"]["median_step_seconds"],
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
