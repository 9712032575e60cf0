"""Two parts of a batched decoding step, each against its alternative, in one process.

On a random Finch L12-D768 (vocabulary 65536), with ``eaglefinch.allocator.keep_freed_memory``
applied as ``generate`` and ``serve`` apply it:

* the exact decoder's step (``DecodeModel.step``, the default layout) with the model's operations
  on the WKV state (``state_math="model"``) and with the regrouped sums (``"regrouped"``, the
  default of the packed layouts), fp32 and bf16 models, 1, 16 and 64 rows;
* choosing the next token of 16 rows at top-p 0.01-0.99: the exact nucleus threshold then one
  draw (``filtered_probs`` + ``draw``) against ``sample`` (rejection from top-p 0.5), on the
  logits of a random model's step (flat: most of the vocabulary is in the nucleus) and on the
  same logits times 8 (peaked).

Medians of interleaved rounds, so that a busy machine slows both alike.

    nice python benchmarks/batched_step.py [--rounds 15]

writes ``benchmarks/results/batched_step.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import ensure_malloc_env, write_json

ensure_malloc_env()

import torch  # noqa: E402

from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.allocator import keep_freed_memory  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.generation.sampling import SamplingConfig, draw, filtered_probs, sample  # noqa: E402
from eaglefinch.model.decode import DecodeModel  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOP_PS = (0.01, 0.3, 0.5, 0.9, 0.99)


def interleaved(contenders: dict, rounds: int) -> dict:
    """Median seconds of each callable, timed once per round in turn after one warm-up call each."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def state_math(config: RWKVConfig, rounds: int) -> list[dict]:
    results = []
    for dtype_name, dtype in DTYPES.items():
        model = model_from_state_dict(random_state_dict(config, seed=0, dtype=dtype), dtype=dtype)
        decoders = {name: DecodeModel(model, state_math=name) for name in ("model", "regrouped")}
        for rows in (1, 16, 64):
            tokens = torch.randint(0, config.vocab_size, (rows,), generator=torch.Generator().manual_seed(0))
            states = {name: d.zero_state(rows) for name, d in decoders.items()}
            with torch.inference_mode():
                medians = interleaved(
                    {
                        name: (lambda d=d, s=states[name], t=tokens: d.step(t, s))
                        for name, d in decoders.items()
                    },
                    rounds,
                )
            results.append(
                {
                    "dtype": dtype_name,
                    "layout": decoders["model"].head.kind,
                    "rows": rows,
                    "ms_model": 1e3 * medians["model"],
                    "ms_regrouped": 1e3 * medians["regrouped"],
                    "speedup": medians["model"] / medians["regrouped"],
                }
            )
            print(
                f"step {dtype_name} {rows:3d} rows: model {1e3 * medians['model']:.1f} ms, "
                f"regrouped {1e3 * medians['regrouped']:.1f} ms",
                flush=True,
            )
    return results


def sampling(config: RWKVConfig, rounds: int) -> list[dict]:
    model = model_from_state_dict(random_state_dict(config, seed=0))
    decoder = DecodeModel(model)
    tokens = torch.randint(0, config.vocab_size, (16,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        flat = decoder.step(tokens, decoder.zero_state(16))
    results = []
    for shape, logits in (("flat", flat), ("peaked", flat * 8)):
        for top_p in TOP_PS:
            config_p = SamplingConfig(top_p=top_p)
            generators = [torch.Generator().manual_seed(i) for i in range(16)]
            medians = interleaved(
                {
                    "threshold": lambda c=config_p, x=logits, g=generators: draw(filtered_probs(x, c), g),
                    "sample": lambda c=config_p, x=logits, g=generators: sample(x, c, g),
                },
                rounds,
            )
            nucleus = int((filtered_probs(logits, config_p) > 0).sum()) / 16
            results.append(
                {
                    "logits": shape,
                    "top_p": top_p,
                    "mean_nucleus_tokens": nucleus,
                    "ms_threshold_then_draw": 1e3 * medians["threshold"],
                    "ms_sample": 1e3 * medians["sample"],
                    "speedup": medians["threshold"] / medians["sample"],
                }
            )
            print(
                f"sampling 16 rows, {shape} logits, top_p {top_p}: threshold+draw "
                f"{1e3 * medians['threshold']:.2f} ms, sample {1e3 * medians['sample']:.2f} ms "
                f"(nucleus {nucleus:.0f} tokens)",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    keep_freed_memory()
    config = RWKVConfig("6.0", n_layer=12, n_embd=768, vocab_size=65536)
    path = write_json(
        "batched_step",
        {
            "benchmark": "batched_step",
            "command": "nice python benchmarks/batched_step.py",
            "model": "random Finch L12-D768, vocabulary 65536",
            "settings": {"rounds": args.rounds, "torch_threads": torch.get_num_threads()},
            "state_math": state_math(config, args.rounds),
            "sampling": sampling(config, args.rounds),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
