"""Requests/s of the lm-eval adapter on a multiple-choice task: state forking against scoring from scratch.

The task: ``--questions`` documents, each a context of about ``--context-bytes`` bytes of English
text (slices of the bundled UDHR) followed by ``--choices`` short answers, as lm-eval sends a
multiple-choice task (one loglikelihood request per choice, all with the document's context).

Contenders, on the random Finch L12-D768 model (``RWKVConfig.preset("finch-l12-d768")``, fp32):

* ``forked``: ``HarnessModel(share_prefix=True)``: each context runs once; its state is forked
  (``RWKVState.repeat``) into one row per choice and the choices run as one batch;
* ``scratch``: ``HarnessModel(share_prefix=False)``: every request runs its context and its
  continuation from the zero state, as a model without a reusable state has to.

Both see identical requests; their log-likelihoods are compared (max abs difference recorded).
Contenders are timed in interleaved rounds; the best round of each is reported, with the ratio.
The script re-executes itself with the allocator settings of SPEC.md ("Measuring").

Usage::

    nice python benchmarks/eval_speed.py                     # 8 questions x 4 choices, 2 rounds
    nice python benchmarks/eval_speed.py --questions 4 --rounds 1

Writes ``benchmarks/results/eval_speed.json`` and ``eval_speed.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ensure_malloc_env, environment, write_json  # noqa: E402

ensure_malloc_env()

import torch  # noqa: E402

from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.evaluation import HarnessModel  # noqa: E402
from eaglefinch.evaluation.bpb import select_languages, udhr_documents  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402
from eaglefinch.tokenizer import WorldTokenizer  # noqa: E402

ANSWERS = [" yes", " no", " it depends on the law", " never, in any country"]


def make_requests(questions: int, choices: int, context_bytes: int) -> list[tuple[str, str]]:
    """``questions * choices`` (context, continuation) pairs; contexts are distinct UDHR slices."""
    text = select_languages(udhr_documents(), ["eng"])[0].text
    requests = []
    for q in range(questions):
        start = (q * 97) % max(1, len(text) - context_bytes)
        context = f"{text[start : start + context_bytes].strip()}\nQuestion {q + 1}: is this right?\nAnswer:"
        requests += [(context, ANSWERS[c % len(ANSWERS)]) for c in range(choices)]
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="finch-l12-d768")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--context-bytes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    config = RWKVConfig.preset(args.preset)
    model = model_from_state_dict(random_state_dict(config, seed=0)).eval()
    tokenizer = WorldTokenizer()
    requests = make_requests(args.questions, args.choices, args.context_bytes)
    context_tokens = [len(tokenizer.encode(c)) + 1 for c, _ in requests[:: args.choices]]
    contenders = {
        "forked": HarnessModel(model, tokenizer, batch_size=args.choices, share_prefix=True),
        "scratch": HarnessModel(model, tokenizer, share_prefix=False),
    }
    contenders["forked"].loglikelihood(requests[:2])  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    outputs = {}
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            start = time.perf_counter()
            outputs[name] = contenders[name].loglikelihood(requests)
            times[name].append(time.perf_counter() - start)
            print(f"round {r}: {name} {times[name][-1]:.2f} s", file=sys.stderr)
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(outputs["forked"], outputs["scratch"], strict=True))
    same_greedy = all(a[1] == b[1] for a, b in zip(outputs["forked"], outputs["scratch"], strict=True))
    n = len(requests)
    results = {
        name: {
            "best_s": min(t),
            "times_s": t,
            "requests_per_s": n / min(t),
        }
        for name, t in times.items()
    }
    speedup = results["forked"]["requests_per_s"] / results["scratch"]["requests_per_s"]
    path = write_json(
        "eval_speed",
        {
            "command": " ".join(["python", *sys.argv]),
            "model": {"preset": args.preset, "dtype": "float32", "parameters": model.num_parameters()},
            "task": {
                "questions": args.questions,
                "choices": args.choices,
                "requests": n,
                "context_tokens_mean": sum(context_tokens) / len(context_tokens),
                "continuation_tokens": [len(tokenizer.encode(a)) for a in ANSWERS[: args.choices]],
            },
            "rounds": args.rounds,
            "results": results,
            "forked_over_scratch": speedup,
            "max_abs_loglikelihood_difference": max_diff,
            "same_is_greedy": same_greedy,
        },
    )
    plot(results, speedup, RESULTS / "eval_speed.png", environment()["cpu"], args)
    print(
        f"forked {results['forked']['requests_per_s']:.2f} req/s, scratch "
        f"{results['scratch']['requests_per_s']:.2f} req/s: {speedup:.2f}x; max |diff| {max_diff:.2e}; {path}"
    )


def plot(results: dict, speedup: float, path: Path, cpu: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars = ax.bar(names, [results[n]["requests_per_s"] for n in names], color=["tab:green", "tab:gray"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set_ylabel("requests / s (higher is better)")
    ax.set_title(
        f"lm-eval loglikelihood, {args.preset}, {args.choices} choices\nforked {speedup:.2f}x; {cpu}",
        fontsize=8,
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
