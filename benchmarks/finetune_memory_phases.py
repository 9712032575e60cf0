"""Where a fine-tuning step's peak memory goes: resident memory at each phase of two steps.

For the contenders of ``benchmarks/finetune_speed.py`` (default: ``lora-r64``, the
largest adapter), each in a fresh process with that benchmark's memory-pass allocator settings, records
the resident set (``VmRSS``) after each phase and the peak within it (``VmHWM``, reset between
phases through ``/proc/self/clear_refs``, Linux only): the imports, building the model, adapting it
(``import peft`` and the adapters for LoRA), then forward, backward, optimiser step and
``zero_grad`` of two steps.

    nice python benchmarks/finetune_memory_phases.py [--contenders lora-r64 full ...] [--quick]
    nice python benchmarks/finetune_memory_phases.py --from-checkpoint --contenders lora-r64 full

writes ``benchmarks/results/finetune_memory_phases.json``. ``--from-checkpoint`` builds the model
as ``eaglefinch finetune --model`` does, from a random bf16 ``.pth`` written first (as released
checkpoints are), instead of initialising it in place; it writes ``..._checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from finetune_speed import CONTENDERS, MEMORY_PASS_ENV  # noqa: E402


def _memory() -> dict:
    """Resident and peak-resident MB since the last reset."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out["VmRSS"], "peak_mb": out["VmHWM"]}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # resets VmHWM to the current resident set


def worker(spec: dict) -> list[dict]:
    phases = []

    def mark(name: str) -> None:
        phases.append({"phase": name, **_memory()})
        _reset_peak()

    import torch

    import eaglefinch.train.loop  # noqa: F401  (the imports every method pays)

    mark("imports")
    from finetune_speed import build

    model, module, optimizer, config = build(spec)
    mark("build and adapt")
    data = torch.randint(
        1, config.vocab_size, (1, spec["ctx"] + 1), generator=torch.Generator().manual_seed(1)
    )
    for step in range(2):
        loss = module(data[:, :-1], data[:, 1:])
        mark(f"step {step} forward")
        loss.backward()
        mark(f"step {step} backward")
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            mark(f"step {step} optimizer")
        module.zero_grad(set_to_none=optimizer is not None)
        mark(f"step {step} zero_grad")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contenders", nargs="+", default=["lora-r64"], choices=list(CONTENDERS))
    parser.add_argument("--quick", action="store_true", help="2 layers, context 256 (checks the script)")
    parser.add_argument("--from-checkpoint", action="store_true", help="build from a bf16 .pth file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    base = {"n_layer": 2 if args.quick else 12, "ctx": 256 if args.quick else 1024, "threads": 2}
    tmp = tempfile.TemporaryDirectory()
    if args.from_checkpoint:
        import torch

        from eaglefinch import RWKVConfig
        from eaglefinch.checkpoint import save_state_dict
        from eaglefinch.testing import random_state_dict

        config = RWKVConfig.preset("finch-l12-d768").replace(n_layer=base["n_layer"])
        base["checkpoint"] = str(Path(tmp.name) / "finch-bf16.pth")
        save_state_dict(random_state_dict(config, seed=0, dtype=torch.bfloat16), base["checkpoint"])
    results = {}
    for name in args.contenders:
        spec = {**base, **CONTENDERS[name]}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True, text=True, check=False, env={**os.environ, **MEMORY_PASS_ENV},
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        phases = json.loads(out.stdout.strip().splitlines()[-1])
        results[name] = {"spec": spec, "phases": phases, "peak_mb": max(p["peak_mb"] for p in phases)}
        print(f"{name}: peak {results[name]['peak_mb']:.0f} MB")
        for p in phases:
            print(f"   {p['phase']:20s} rss {p['rss_mb']:7.0f} MB  peak within {p['peak_mb']:7.0f} MB")
    tmp.cleanup()
    command = "nice python benchmarks/finetune_memory_phases.py --contenders " + " ".join(args.contenders)
    if args.from_checkpoint:
        command += " --from-checkpoint"
    name = "finetune_memory_phases" + ("_checkpoint" if args.from_checkpoint else "")
    path = write_json(
        name + ("_quick" if args.quick else ""),
        {"benchmark": "finetune_memory_phases", "command": command + (" --quick" if args.quick else ""),
         "results": results},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
