"""``eaglefinch data``: build a World-tokenized binidx corpus from text, jsonl and code, or inspect one."""

from __future__ import annotations

import argparse
import sys

from eaglefinch.errors import DataError

EPILOG = """\
examples:
  eaglefinch data corpus books/ notes.txt dump.jsonl.gz     one source: files, folders, jsonl
  eaglefinch data corpus --mixture mix.json                 weighted sources (JSON or YAML)
  eaglefinch data corpus --info                             what a corpus holds

A mixture spec:
  {"seed": 0, "tokens": null, "sources": [
     {"name": "english", "weight": 0.70, "paths": ["books.jsonl.gz"]},
     {"name": "multilingual", "weight": 0.15, "paths": ["udhr.jsonl"]},
     {"name": "code", "weight": 0.15, "paths": ["{stdlib}"], "kind": "code", "max_bytes": 2000000}]}

An interrupted build resumes when run again with the same inputs.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="tokenize text, jsonl and code into a binidx corpus",
        description="Tokenize text files, jsonl (a 'text' field) and source-code trees with the World "
        "tokenizer into PREFIX.bin / PREFIX.idx (Megatron binidx, uint16; documents end with "
        "token 0), the format RWKV-LM trains from; with a summary in PREFIX.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prefix", help="output corpus prefix (writes PREFIX.bin, PREFIX.idx, PREFIX.json)")
    p.add_argument("inputs", nargs="*", help="files or folders of one source (instead of --mixture)")
    p.add_argument("--mixture", help="a JSON or YAML mixture spec")
    p.add_argument(
        "--kind",
        choices=["text", "jsonl", "code"],
        help="for inputs: how to read them (default: folders are code, *.jsonl[.gz] jsonl, other files text)",
    )
    p.add_argument("--field", default="text", help="the jsonl field holding a document")
    p.add_argument("--max-bytes", type=int, help="read at most this much input per source")
    p.add_argument("--tokens", type=int, help="output size in tokens (repeats sources if needed)")
    p.add_argument("--seed", type=int, help="mixing order (default: the spec's, else 0)")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: up to 4 for 32 MB or more)")
    p.add_argument(
        "--keep-work", action="store_true", help="keep the per-part cache (PREFIX.work/) afterwards"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--info", action="store_true", help="describe the corpus PREFIX instead of building one")
    p.set_defaults(func=run_data)


def summary_lines(summary: dict) -> list[str]:
    lines = [
        f"{summary['documents']:,} documents, {summary['tokens']:,} tokens -> {summary['prefix']}.bin/.idx"
    ]
    width = max(len(name) for name in summary["sources"])
    for name, s in summary["sources"].items():
        lines.append(
            f"  {name:<{width}}  {s['tokens']:>12,} tokens ({s['share']:6.1%}, weight {s['weight']:g})  "
            f"{s['documents']:>8,} documents  from {s['input_documents']:,} inputs "
            f"({s['input_tokens']:,} tokens, used x{s['repeats']:.2f})"
        )
    return lines


def info_lines(prefix: str) -> list[str]:
    import json

    import numpy as np

    from eaglefinch.train.binidx import BinidxReader, corpus_prefix

    reader = BinidxReader(prefix)
    sizes = np.asarray(reader.sizes, dtype=np.int64)
    lines = [
        f"{reader.prefix}: {reader.num_documents:,} documents, {len(reader):,} items, "
        f"{reader.num_tokens:,} tokens ({reader.dtype})"
    ]
    if len(sizes):
        lines.append(f"  item length: mean {sizes.mean():,.1f}, min {sizes.min():,}, max {sizes.max():,}")
    summary_path = corpus_prefix(prefix).with_suffix(".json")
    if summary_path.exists():
        lines += summary_lines(json.loads(summary_path.read_text(encoding="utf-8")))[1:]
    return lines


def run_data(args: argparse.Namespace) -> int:
    from eaglefinch.train.corpus import build_corpus, single_source
    from eaglefinch.train.mixture import Mixture

    if args.info:
        print("\n".join(info_lines(args.prefix)))
        return 0
    if args.mixture and args.inputs:
        raise DataError("give input paths or --mixture, not both")
    if args.mixture:
        mixture = Mixture.from_file(args.mixture)
        if args.kind or args.max_bytes or args.field != "text":
            raise DataError(
                "--kind, --field and --max-bytes apply to input paths; set them per source in the spec"
            )
    elif args.inputs:
        mixture = single_source(args.inputs, kind=args.kind, field=args.field, max_bytes=args.max_bytes)
    else:
        raise DataError("nothing to tokenize: give input paths or --mixture (or --info to inspect a corpus)")
    if args.tokens is not None or args.seed is not None:
        import dataclasses

        mixture = dataclasses.replace(
            mixture,
            tokens=args.tokens if args.tokens is not None else mixture.tokens,
            seed=args.seed if args.seed is not None else mixture.seed,
        )
    try:
        result = build_corpus(
            mixture, args.prefix, workers=args.workers, progress=args.progress, keep_work=args.keep_work
        )
    except KeyboardInterrupt:
        print("eaglefinch data: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(result.summary)))
    return 0
