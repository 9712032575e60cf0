"""``eaglefinch eval``: bits per byte per language, perplexity, and the lm-eval harness."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from eaglefinch.errors import ConfigError

EPILOG = """\
examples:
  eaglefinch eval bpb finch.pth                             UDHR, 532 languages (first ~2 kB of each)
  eaglefinch eval bpb eagle.pth finch.pth --langs eng,fra,jpn,arb --plot bpb.png --json bpb.json
  eaglefinch eval bpb finch.pth --data docs.jsonl --lang-field lang
  eaglefinch eval ppl finch.pth book.txt                    a text file, any length, streamed
  eaglefinch eval ppl finch.pth corpus/train                a binidx corpus (train.bin + train.idx)
  eaglefinch eval harness finch.pth --tasks piqa,xcopa      lm-eval tasks (pip install 'eaglefinch[eval]')
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="bits per byte per language, perplexity, lm-eval tasks",
        description="Evaluate checkpoints: compression per language (bits per byte), perplexity of a "
        "file or corpus, and EleutherAI lm-eval tasks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="eval_command", metavar="WHAT")
    p.set_defaults(func=lambda args: p.print_help() or 2)

    b = sub.add_parser("bpb", help="bits per byte and loss per token, per language")
    b.add_argument("checkpoints", nargs="+", help="one or more checkpoints, scored side by side")
    b.add_argument("--data", help="a .jsonl(.gz) or text file (default: the bundled UDHR slice)")
    b.add_argument(
        "--langs", help="comma-separated language codes to keep (UDHR codes such as eng,cmn_hans,jpn)"
    )
    b.add_argument("--text-field", default="text", help="JSON field holding the text (default text)")
    b.add_argument("--lang-field", default="code", help="JSON field naming the language (default code)")
    b.add_argument("--plot-langs", help="languages in the bar chart (default: --langs, else the first 30)")
    _common(b)
    b.add_argument("--plot", help="write a PNG bar chart of bits per byte here")
    b.set_defaults(func=run_bpb)

    q = sub.add_parser("ppl", help="token-level loss and perplexity of a text file or binidx corpus")
    q.add_argument("checkpoint")
    q.add_argument("file", help="a UTF-8 text file, or a binidx corpus PREFIX (PREFIX.bin + PREFIX.idx)")
    q.add_argument("--max-tokens", type=int, help="stop after this many scored tokens")
    _common(q)
    q.set_defaults(func=run_ppl)

    h = sub.add_parser("harness", help="run lm-eval tasks on a checkpoint (needs eaglefinch[eval])")
    h.add_argument("checkpoint")
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--num-fewshot", type=int)
    h.add_argument("--limit", type=float, help="documents per task (or a fraction)")
    h.add_argument("--batch-size", type=int, default=8, help="continuations of one context scored together")
    h.add_argument("--include-path", help="a folder of extra task YAML files")
    h.add_argument("--no-share-prefix", action="store_true", help="score every request from the start")
    _common(h, chunk=False)
    h.set_defaults(func=run_harness)


def _common(p: argparse.ArgumentParser, chunk: bool = True) -> None:
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the file's)"
    )
    p.add_argument("--device", help="torch device (default cpu)")
    if chunk:
        p.add_argument(
            "--chunk-len", type=int, default=512, help="tokens per forward pass; the state carries over"
        )
    p.add_argument("--json", help="write the results as JSON here")


def _write_json(path: str, data: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, target)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _names(paths: list[str]) -> list[str]:
    names = [Path(p).stem for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def run_bpb(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from eaglefinch.checkpoint import load
    from eaglefinch.evaluation.bpb import (
        load_documents,
        score_languages,
        select_languages,
        tokenize_languages,
    )
    from eaglefinch.tokenizer import WorldTokenizer

    if args.chunk_len < 1:
        raise ConfigError(f"--chunk-len must be at least 1, not {args.chunk_len}")
    docs = select_languages(load_documents(args.data, args.text_field, args.lang_field), _split(args.langs))
    scores, ids = tokenize_languages(docs, WorldTokenizer().encode)
    names = _names(args.checkpoints)
    for name, path in zip(names, args.checkpoints, strict=True):
        model = load(path, dtype=args.dtype, device=args.device).eval()
        with tqdm(total=sum(s.n_tokens for s in scores), unit="tok", desc=name, file=sys.stderr) as bar:
            score_languages(model, name, scores, ids, args.chunk_len, bar)
        del model
    print(format_table(scores, names))
    if args.json:
        _write_json(
            args.json,
            {
                "data": args.data or "udhr (bundled slice)",
                "checkpoints": dict(zip(names, args.checkpoints, strict=True)),
                "languages": [s.as_dict() for s in scores],
                "total": totals(scores, names),
            },
        )
    if args.plot:
        chosen = _split(args.plot_langs) or _split(args.langs) or [s.lang for s in scores[:30]]
        plot_bpb([s for s in scores if s.lang in set(chosen)], names, args.plot)
    return 0


def totals(scores, names: list[str]) -> dict:
    import math

    n_bytes = sum(s.n_bytes for s in scores)
    n_tokens = sum(s.n_tokens for s in scores)
    return {
        "n_bytes": n_bytes,
        "n_tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens,
        "models": {
            n: {
                "loss_per_token": sum(s.nll[n] for s in scores) / n_tokens,
                "bits_per_byte": sum(s.nll[n] for s in scores) / math.log(2) / n_bytes,
            }
            for n in names
        },
    }


def format_table(scores, names: list[str]) -> str:
    head = f"{'lang':<18} {'bytes':>7} {'tokens':>7} {'B/tok':>6}"
    for name in names:
        head += f" {name[:14] + ' loss':>20} {'bpb':>7}"
    lines = [head]
    rows = [*scores]
    for s in rows:
        line = f"{s.lang[:18]:<18} {s.n_bytes:>7} {s.n_tokens:>7} {s.bytes_per_token:>6.2f}"
        for name in names:
            line += f" {s.loss_per_token(name):>20.4f} {s.bits_per_byte(name):>7.4f}"
        lines.append(line)
    t = totals(scores, names)
    line = f"{'all':<18} {t['n_bytes']:>7} {t['n_tokens']:>7} {t['bytes_per_token']:>6.2f}"
    for name in names:
        line += f" {t['models'][name]['loss_per_token']:>20.4f} {t['models'][name]['bits_per_byte']:>7.4f}"
    lines.append(line)
    return "\n".join(lines)


def plot_bpb(scores, names: list[str], path: str) -> None:
    """Grouped bars: bits per byte per language, one colour per checkpoint; bytes/token as a label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not scores:
        raise ConfigError("none of the plotted languages were scored (see --plot-langs)")
    x = np.arange(len(scores))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(scores) + 2), 4.5))
    for i, name in enumerate(names):
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width, [s.bits_per_byte(name) for s in scores], width, label=name
        )
    ax.set_xticks(x, [f"{s.lang}\n{s.bytes_per_token:.1f} B/tok" for s in scores], rotation=90, fontsize=7)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Compression per language (label: World tokenizer bytes per token)")
    ax.legend()
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, target)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_ppl(args: argparse.Namespace) -> int:
    from eaglefinch.checkpoint import load
    from eaglefinch.evaluation.perplexity import perplexity

    if args.chunk_len < 1:
        raise ConfigError(f"--chunk-len must be at least 1, not {args.chunk_len}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    model = load(args.checkpoint, dtype=args.dtype, device=args.device).eval()
    result = perplexity(model, args.file, chunk_len=args.chunk_len, max_tokens=args.max_tokens)
    print(
        f"{result.source}: {result.num_tokens} tokens, loss {result.loss:.4f} nats/token, "
        f"perplexity {result.perplexity:.3f}"
    )
    if args.json:
        _write_json(args.json, {"checkpoint": args.checkpoint, **result.as_dict()})
    return 0


def run_harness(args: argparse.Namespace) -> int:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from eaglefinch.evaluation.lm_eval_adapter import EaglefinchLM  # raises ConfigError without lm-eval

    lm = EaglefinchLM(
        args.checkpoint,
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        share_prefix=not args.no_share_prefix,
    )
    manager = TaskManager(include_path=args.include_path) if args.include_path else None
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=_split(args.tasks),
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        task_manager=manager,
        log_samples=False,
    )
    if results is None:
        return 0
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.json:
        _write_json(
            args.json,
            {
                "checkpoint": args.checkpoint,
                "results": results["results"],
                "config": {k: str(v) for k, v in results.get("config", {}).items()},
            },
        )
    return 0
