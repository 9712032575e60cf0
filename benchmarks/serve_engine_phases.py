"""Where the serving engine's time goes under load: prefill, batched decoder steps, sampling.

The engine of ``eaglefinch serve`` runs in this process on a random Finch L12-D768 checkpoint (no
HTTP: requests are submitted directly), with the workload of ``benchmarks/serve_load.py``: N rows
kept busy, each new request a distinct 40-200-word prompt and 16-128 generated tokens at
temperature 1, top-p 0.9. For S seconds the engine's admission (prefill of each new prompt), its
sampling (``_pick``) and the decoder's batched steps are timed.

    nice python benchmarks/serve_engine_phases.py [--streams 16] [--seconds 30] [--dtypes fp32 bf16]

writes ``benchmarks/results/serve_engine_phases.json``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

from common import ensure_malloc_env, write_json
from serve_load import prompt_source

ensure_malloc_env()

import torch  # noqa: E402

from eaglefinch import RWKVConfig, WorldTokenizer  # noqa: E402
from eaglefinch.allocator import keep_freed_memory  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.generation.prefix_cache import PrefixCache  # noqa: E402
from eaglefinch.generation.sampling import SamplingConfig  # noqa: E402
from eaglefinch.serve.engine import Engine, Request  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(dtype: str, streams: int, seconds: float, seed: int) -> dict:
    config = RWKVConfig("6.0", n_layer=12, n_embd=768, vocab_size=65536)
    model = model_from_state_dict(
        random_state_dict(config, seed=seed, dtype=DTYPES[dtype]), dtype=DTYPES[dtype]
    )
    tokenizer = WorldTokenizer()
    engine = Engine(model, tokenizer, max_batch=streams, cache=PrefixCache(max_bytes=256 * 2**20))
    decoder = engine.decoder  # the engine's own, as ``eaglefinch serve`` builds it
    spent: Counter = Counter()

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    engine._admit = timed("prefill (admission)", engine._admit)
    engine._pick = timed("sampling", engine._pick)
    decoder.step = timed("decoder steps", decoder.step)
    next_prompt, rng = prompt_source(seed), random.Random(seed + 1)
    sampling = SamplingConfig(temperature=1.0, top_p=0.9)
    end = time.perf_counter() + seconds
    prompt_tokens = []

    def submit() -> None:
        if time.perf_counter() < end:
            tokens = tokenizer.encode(next_prompt())
            prompt_tokens.append(len(tokens))
            engine.submit(Request(tokens, rng.randint(16, 128), sampling, emit))

    def emit(event) -> None:
        if event.kind in ("done", "error"):
            submit()

    for _ in range(streams):
        submit()
    start = time.perf_counter()
    engine.run(should_stop=lambda: time.perf_counter() > end)  # on this thread, as serve runs it
    wall = time.perf_counter() - start
    stats = engine.stats
    return {
        "dtype": dtype,
        "streams": streams,
        "wall_s": wall,
        "tokens_generated": stats.tokens_generated,
        "tokens_per_s": stats.tokens_generated / wall,
        "decoder_steps": stats.steps,
        "ms_per_decoder_step": 1e3 * spent["decoder steps"] / max(stats.steps, 1),
        "ms_sampling_per_step": 1e3 * spent["sampling"] / max(stats.steps, 1),
        "requests_submitted": len(prompt_tokens),
        "requests_finished": stats.requests_finished,
        "mean_prompt_tokens": sum(prompt_tokens) / max(len(prompt_tokens), 1),
        "seconds": dict(spent),
        "share_of_wall": {name: value / wall for name, value in spent.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keep_freed_memory()  # as eaglefinch serve runs
    results = []
    for dtype in args.dtypes:
        result = run(dtype, args.streams, args.seconds, args.seed)
        results.append(result)
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["share_of_wall"].items())
        print(f"{dtype}: {result['tokens_per_s']:.1f} tok/s at {args.streams} streams; {shares}", flush=True)
    path = write_json(
        "serve_engine_phases",
        {
            "benchmark": "serve_engine_phases",
            "command": "nice python benchmarks/serve_engine_phases.py",
            "model": "random Finch L12-D768, vocabulary 65536, --weights exact",
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
