"""What ``eaglefinch.allocator.keep_freed_memory`` does to a decoding loop, in fresh processes.

Each contender is a new process with no ``MALLOC_*`` variables in its environment, as a user's
shell has: it loads a random Finch L12-D768 (World vocabulary), prefills a prompt, then runs
batch-16 steps of the exact decoder, each followed by top-p 0.9 sampling of the 16 rows, and
reports the median step and sampling times. ``glibc defaults`` leaves the allocator alone;
``keep_freed_memory`` applies the settings that ``eaglefinch generate / chat / serve`` apply.

    nice python benchmarks/allocator_effect.py

writes ``benchmarks/results/allocator_effect.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

CONTENDERS = ("glibc defaults", "keep_freed_memory")


def worker(name: str, steps: int, threads: int) -> dict:
    if name == "keep_freed_memory":
        from eaglefinch.allocator import keep_freed_memory

        assert keep_freed_memory()
    import torch

    from eaglefinch import RWKVConfig
    from eaglefinch.checkpoint import model_from_state_dict
    from eaglefinch.generation.context import prefill
    from eaglefinch.generation.generate import get_decoder
    from eaglefinch.generation.sampling import SamplingConfig, draw, filtered_probs
    from eaglefinch.model.state import RWKVState
    from eaglefinch.testing import random_state_dict

    torch.set_num_threads(threads)
    model = model_from_state_dict(random_state_dict(RWKVConfig.preset("finch-l12-d768"))).eval()
    decoder = get_decoder(model)
    config = SamplingConfig(top_p=0.9)
    step_s, sample_s = [], []
    with torch.inference_mode():
        context = prefill(model, list(range(1, 161)), decoder=decoder)
        state = RWKVState.cat([context.state.clone() for _ in range(16)])
        generators = [torch.Generator().manual_seed(i) for i in range(16)]
        tokens = torch.randint(1, model.config.vocab_size, (16,), generator=torch.Generator().manual_seed(0))
        for i in range(steps + 5):
            t0 = time.perf_counter()
            logits = decoder.step(tokens, state)
            t1 = time.perf_counter()
            tokens = draw(filtered_probs(logits, config), generators)
            t2 = time.perf_counter()
            if i >= 5:  # warm-up
                step_s.append(t1 - t0)
                sample_s.append(t2 - t1)
    return {"step_ms": 1000 * statistics.median(step_s), "sample_ms": 1000 * statistics.median(sample_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads)))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    results = {}
    for name in CONTENDERS:
        command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps)]
        command += ["--threads", str(args.threads)]
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        row = results[name]
        print(f"{name:18s} batch-16 step {row['step_ms']:6.1f} ms, sampling {row['sample_ms']:6.1f} ms")
    base, tuned = results["glibc defaults"], results["keep_freed_memory"]
    summary = {k: base[k] / tuned[k] for k in ("step_ms", "sample_ms")}
    path = write_json(
        "allocator_effect",
        {
            "benchmark": "allocator_effect",
            "command": "nice python benchmarks/allocator_effect.py",
            "model": "random Finch L12-D768, vocabulary 65536, fp32, exact decoder, batch 16, top-p 0.9",
            "threads": args.threads,
            "results": results,
            "defaults_over_tuned": summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
