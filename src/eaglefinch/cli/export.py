"""``eaglefinch export``: a checkpoint as a file for another runtime (GGUF for llama.cpp)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  eaglefinch export --gguf finch.gguf --model RWKV-x060-World-1B6.pth            f16 matrices
  eaglefinch export --gguf finch-q8.gguf --model RWKV-x060-World-1B6.pth --type q8_0
then: llama-cli -m finch.gguf  (llama.cpp runs Finch/RWKV-6; it has no Eagle/RWKV-5 graph)
"""


def register(subparsers) -> None:
    from eaglefinch.export.gguf import TYPES

    p = subparsers.add_parser(
        "export",
        help="write a Finch checkpoint as a GGUF file that llama.cpp runs",
        description="Export an official Finch (RWKV-6) checkpoint to GGUF (llama.cpp's rwkv6 "
        "architecture, with the World tokenizer embedded).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gguf", required=True, metavar="OUT", help="the GGUF file to write")
    p.add_argument("--model", required=True, metavar="FILE", help="checkpoint: official .pth or .safetensors")
    p.add_argument(
        "--type",
        default="f16",
        help=f"the matrices' type: {', '.join(TYPES)} (default f16; vectors stay f32)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eaglefinch.export.gguf import export_checkpoint

    path = export_checkpoint(args.model, args.gguf, args.type)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0
