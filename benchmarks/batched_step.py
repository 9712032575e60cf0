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

Medians of interleaved rounds (``decode_speed.interleaved``: the order rotating), so that a busy
machine slows both alike.

    nice python benchmarks/batched_step.py [--rounds 15]

writes ``benchmarks/results/batched_step.json``.
"""

from __future__ import annotations

import argparse
import statistics

from common import ensure_malloc_env, write_json

ensure_malloc_env()

import torch  # noqa: E402
from decode_speed import interleaved  # noqa: E402

from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.allocator import keep_freed_memory  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.generation.sampling import SamplingConfig, draw, filtered_probs, sample  # noqa: E402
from eaglefinch.model.decode import DecodeModel  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOP_PS = (0.01, 0.3, 0.5, 0.9, 0.99)


def compare(label: str, contenders: dict, rounds: int, **fields) -> dict:
    """Median milliseconds of each contender (interleaved rounds, the order rotating), as a result row
    with ``fields``; the first contender's over the second's is the speedup."""
    medians = {name: 1e3 * statistics.median(t) for name, t in interleaved(contenders, 1, rounds).items()}
    (first, a), (second, b) = medians.items()
    print(f"{label}: {first} {a:.2f} ms, {second} {b:.2f} ms", flush=True)
    return {**fields, **{f"ms_{name}": ms for name, ms in medians.items()}, "speedup": a / b}


def state_math(config: RWKVConfig, rounds: int) -> list[dict]:
    results = []
    for dtype_name, dtype in DTYPES.items():
        model = model_from_state_dict(random_state_dict(config, seed=0, dtype=dtype), dtype=dtype)
        decoders = {name: DecodeModel(model, state_math=name) for name in ("model", "regrouped")}
        for rows in (1, 16, 64):
            tokens = torch.randint(0, config.vocab_size, (rows,), generator=torch.Generator().manual_seed(0))
            states = {name: d.zero_state(rows) for name, d in decoders.items()}
            steps = {
                name: (lambda d=d, s=states[name], t=tokens: d.step(t, s)) for name, d in decoders.items()
            }
            with torch.inference_mode():
                results.append(
                    compare(
                        f"step {dtype_name} {rows:3d} rows",
                        steps,
                        rounds,
                        dtype=dtype_name,
                        layout=decoders["model"].head.kind,
                        rows=rows,
                    )
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
            c = SamplingConfig(top_p=top_p)
            g = [torch.Generator().manual_seed(i) for i in range(16)]
            nucleus = int((filtered_probs(logits, c) > 0).sum()) / 16
            contenders = {
                "threshold_then_draw": lambda c=c, x=logits, g=g: draw(filtered_probs(x, c), g),
                "sample": lambda c=c, x=logits, g=g: sample(x, c, g),
            }
            label = f"sampling 16 rows, {shape} logits, top_p {top_p} (nucleus {nucleus:.0f} tokens)"
            results.append(
                compare(label, contenders, rounds, logits=shape, top_p=top_p, mean_nucleus_tokens=nucleus)
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
