"""``eaglefinch bench long-context``: loss against token position on long documents (paper Figure 5).

Usage::

    eaglefinch bench long-context                                  # shipped 11-book KJV slice
    eaglefinch bench long-context --corpus kjv_books.jsonl --heldout 6
    eaglefinch bench long-context --steps 20 --eval-len 2048 --out /tmp/lc   # a quick look

Trains RWKV-4, Eagle, Finch and a RoPE Transformer of one width and depth at context ``--ctx`` on
the training documents (random windows), then reads each held-out document from its first token,
``--eval-chunk`` tokens per call with the state carried, up to ``--eval-len`` tokens (the
Transformer in one causal pass over the same tokens: full attention, no window). The per-position
loss is averaged over documents and smoothed in log-spaced bins. Writes ``results.json``,
``long_context.png`` and ``README.md`` (a table of mean losses by position range) into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eaglefinch.errors import ConfigError
from eaglefinch.experiments import environment_stamp, write_json_atomic, write_text_atomic
from eaglefinch.experiments.long_context.data import Corpus, build_corpus, sample_windows, shipped_corpus
from eaglefinch.experiments.long_context.evaluate import average_over_documents, bin_means, position_losses
from eaglefinch.experiments.long_context.models import LABELS, MODELS, make_model

HELP = "loss by token position on held-out long documents: RWKV-4, Eagle, Finch, Transformer (paper Figure 5)"
DEFAULT_OUT = Path("benchmarks/results/long_context")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="JSON lines with 'title' and 'text' (.gz allowed); default: the shipped KJV slice",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}"
    )
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=512, help="training context")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="training steps per model")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--heldout", type=int, default=3, help="whole documents held out for evaluation")
    parser.add_argument("--eval-len", type=int, default=16384, help="tokens read per held-out document")
    parser.add_argument(
        "--eval-chunk", type=int, default=1024, help="tokens per call, state carried between calls"
    )
    parser.add_argument("--bins", type=int, default=24, help="log-spaced bins over positions 1..eval-len")
    parser.add_argument(
        "--vocab",
        type=int,
        default=1024,
        help="compact vocabulary: the most frequent training tokens, plus one unknown id",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of ``lr``."""
    warm = max(1, steps // 10)
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: nn.Module, corpus: Corpus, args: argparse.Namespace, gen: torch.Generator) -> list[float]:
    """AdamW on random ``ctx + 1``-token windows from the zero state; returns the loss every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    losses = []
    model.train()
    for step in tqdm(range(args.steps), desc="train", leave=False):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        x = sample_windows(corpus.train, args.batch, args.ctx + 1, gen)
        hidden, _ = model.forward_hidden(x[:, :-1])
        loss = F.cross_entropy(model.head(hidden).flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def range_means(mean: np.ndarray, ctx: int) -> dict[str, float]:
    """Mean loss over position ranges: within the training context, then each doubling beyond it."""
    out = {}
    lo, hi = 1, ctx
    while lo <= len(mean):
        out[f"{lo}-{min(hi, len(mean))}"] = float(mean[lo - 1 : hi].mean())
        lo, hi = hi + 1, hi * 2
    return out


def verdict(models: dict[str, dict], ctx: int) -> str:
    """Whether the paper's ordering shows: past ``ctx`` RWKV-4's loss climbs most, Eagle's less, Finch's
    least.

    The change is the last position range's mean loss minus the mean over the second half of the
    training window (the first half is dominated by the start of the document, where any model is
    worse for lack of context).
    """
    rise = {n: models[n]["rise_past_ctx"] for n in ("rwkv4", "eagle", "finch") if n in models}
    if len(rise) < 3:
        return "Not all three recurrent models ran; no ordering to check."
    parts = ", ".join(f"{LABELS[n]} {rise[n]:+.3f}" for n in ("rwkv4", "eagle", "finch"))
    ordered = rise["rwkv4"] > rise["eagle"] > rise["finch"]
    lead = (
        f"Change in mean loss from positions {ctx // 2 + 1}-{ctx} to the last range: {parts} "
        "(the paper: RWKV-4 climbs, Eagle less, Finch stays low). "
    )
    if ordered and rise["rwkv4"] > 0:
        return lead + "The paper's ordering shows at this scale."
    if ordered:
        return lead + (
            "The changes are in the paper's order, but RWKV-4 does not climb past its training "
            "length, so the paper's effect does not show at this scale."
        )
    return lead + "The paper's ordering does not show at this scale."


def plot(path: Path, models: dict[str, dict], ctx: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, result in models.items():
        ax.plot(result["bins"]["position"], result["bins"]["loss"], marker=".", label=LABELS[name])
    ax.axvline(ctx, color="grey", linestyle=":", linewidth=1, label=f"training context {ctx}")
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats, mean over documents, log-binned)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def readme(result: dict) -> str:
    models = result["models"]
    cfg = result["config"]
    keys = list(next(iter(models.values()))["ranges"])
    lines = [
        "# Loss against token position (paper Figure 5, small scale)",
        "",
        f"Models of width {cfg['d_model']} and depth {cfg['n_layer']}, trained {cfg['steps']} steps of "
        f"{cfg['batch']} x {cfg['ctx']} tokens on {len(result['corpus']['train_titles'])} documents of "
        f"`{result['corpus']['path']}`; evaluated on {len(result['corpus']['heldout_titles'])} held-out "
        f"documents ({', '.join(result['corpus']['heldout_titles'])}) from their first token, "
        f"{cfg['eval_len']} tokens each, recurrent models {cfg['eval_chunk']} tokens per call with the "
        "state carried; the Transformer (RoPE) in one causal pass. Compact vocabulary of "
        f"{result['corpus']['vocab_size']} ids (the most frequent training tokens and one unknown id, "
        f"{100 * result['corpus']['heldout_unknown_fraction']:.1f}% of held-out tokens). "
        "Mean loss (nats) over position ranges:",
        "",
        "| model | params | " + " | ".join(keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
    ]
    for name, m in models.items():
        lines.append(
            f"| {LABELS[name]} | {m['params']:,} | "
            + " | ".join(f"{m['ranges'][k]:.3f}" for k in keys)
            + " |"
        )
    lines += ["", verdict(models, cfg["ctx"]), "", "![loss by position](long_context.png)", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        raise ConfigError(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    for flag in ("d_model", "n_layer", "ctx", "batch", "steps", "heldout", "eval_chunk", "bins", "vocab"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive")
    if args.eval_len < 2:
        raise ConfigError("--eval-len must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.corpus or shipped_corpus()
    corpus = build_corpus(
        path,
        n_heldout=args.heldout,
        min_heldout_tokens=args.eval_len + 1,
        seed=args.seed,
        vocab_size=args.vocab,
    )
    docs = [d[: args.eval_len + 1] for d in corpus.heldout]
    result = {
        "environment": environment_stamp("cpu"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "corpus": {
            "path": str(path) if args.corpus else "eaglefinch/data/kjv.jsonl.gz (shipped slice)",
            "train_titles": corpus.train_titles,
            "heldout_titles": corpus.heldout_titles,
            "train_tokens": int(sum(len(d) for d in corpus.train)),
            "heldout_unknown_fraction": float(torch.cat(docs).eq(0).float().mean()),
            "vocab_size": corpus.vocab_size,
        },
        "models": {},
    }
    for name in names:
        torch.manual_seed(args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        model = make_model(name, corpus.vocab_size, args.d_model, args.n_layer)
        t0 = time.perf_counter()
        train_losses = train(model, corpus, args, gen)
        t1 = time.perf_counter()
        losses = [position_losses(model, d, args.eval_chunk).numpy().astype(np.float64) for d in docs]
        t2 = time.perf_counter()
        mean, count = average_over_documents(losses)
        centres, means = bin_means(mean, args.bins)
        ranges = range_means(mean, args.ctx)
        result["models"][name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": t1 - t0,
            "eval_seconds": t2 - t1,
            "train_loss_last10": float(np.mean(train_losses[-10:])),
            "ranges": ranges,
            # last range minus the second half of the training window (see ``verdict``)
            "rise_past_ctx": list(ranges.values())[-1] - float(mean[args.ctx // 2 : args.ctx].mean()),
            "documents_per_position_min": int(count.min()),
            "bins": {"position": centres.round(2).tolist(), "loss": means.round(5).tolist()},
        }
        tqdm.write(
            f"{LABELS[name]}: train {t1 - t0:.0f} s, eval {t2 - t1:.0f} s, "
            f"ranges {result['models'][name]['ranges']}"
        )
    out = args.out
    write_json_atomic(out / "results.json", result)
    plot(
        out / "long_context.png",
        result["models"],
        args.ctx,
        f"d={args.d_model}, L={args.n_layer}, ctx {args.ctx}, {len(docs)} held-out documents",
    )
    write_text_atomic(out / "README.md", readme(result))
    print(verdict(result["models"], args.ctx))
    print(f"wrote {out / 'results.json'}, {out / 'long_context.png'}, {out / 'README.md'}")
    return 0
