"""``eaglefinch generate``: continue a prompt with a checkpoint, streaming the text to stdout.

Example::

    eaglefinch generate --model RWKV-x060-World-1B6.pth --prompt "The Eiffel tower is" \\
        --max-new-tokens 100 --temperature 1.0 --top-p 0.85 --save-state eiffel.safetensors

Also the options and helpers shared with ``eaglefinch chat`` (model loading, sampling flags).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from eaglefinch.errors import ConfigError
from eaglefinch.generation import Context, SamplingConfig, load_state, save_state, start
from eaglefinch.model.decode import DecodeModel
from eaglefinch.model.rwkv import RWKV

# ChatRWKV's pipeline defaults (rwkv.utils.PIPELINE_ARGS), so its settings carry over unchanged.
CLI_SAMPLING = SamplingConfig(
    temperature=1.0, top_p=0.85, alpha_presence=0.2, alpha_frequency=0.2, alpha_decay=0.996
)


def load_tokenizer():
    """The World tokenizer (all released Eagle and Finch models use it)."""
    from eaglefinch.tokenizer import WorldTokenizer

    return WorldTokenizer()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="FILE", help="checkpoint: official .pth or .safetensors"
    )
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="weight dtype (default: the file's; fp16 files run in fp32 on CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument(
        "--weights",
        choices=["exact", "fp16", "int8", "w8a8"],
        default="exact",
        help="decoding matrices: exact (default), fp16 (CPU: half the bytes, lossless for most bf16 "
        "checkpoints), int8 (CPU: a quarter, an approximation) or w8a8 (x86 CPU: int8 weights and "
        "7-bit inputs, the fastest and the coarsest)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while loading")


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: SamplingConfig = CLI_SAMPLING) -> None:
    g = parser.add_argument_group("sampling (defaults: ChatRWKV's pipeline)")
    g.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=defaults.top_p)
    g.add_argument("--top-k", type=int, default=defaults.top_k, help="0 keeps all")
    g.add_argument("--min-p", type=float, default=defaults.min_p)
    g.add_argument("--presence-penalty", type=float, default=defaults.alpha_presence, help="alpha_presence")
    g.add_argument(
        "--frequency-penalty", type=float, default=defaults.alpha_frequency, help="alpha_frequency"
    )
    g.add_argument("--penalty-decay", type=float, default=defaults.alpha_decay, help="alpha_decay")
    g.add_argument(
        "--ban", type=int, action="append", default=[], metavar="ID", help="never generate this token"
    )
    g.add_argument("--seed", type=int, default=None, help="make the sampling reproducible")


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        alpha_presence=args.presence_penalty,
        alpha_frequency=args.frequency_penalty,
        alpha_decay=args.penalty_decay,
        banned_tokens=tuple(args.ban),
        seed=args.seed,
    )


def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}: use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported: use cpu or cuda[:N]")
    return device


def load_model(args: argparse.Namespace, fp32_copies: bool | None = False) -> tuple[RWKV, DecodeModel]:
    """The model and its decoder, as the command-line options ask (``fp32_copies``: see DecodeModel)."""
    from eaglefinch.allocator import keep_freed_memory
    from eaglefinch.checkpoint import load

    device = check_device(args.device)
    if args.dtype == "fp16" and torch.device(device).type == "cpu":
        raise ConfigError(
            "fp16 on CPU is slow and overflow-prone: use --dtype fp32 or bf16 (or --device cuda)"
        )
    progress = not args.no_progress and sys.stderr.isatty()
    keep_freed_memory()  # these commands decode step after step: reuse freed blocks, do not fault them in
    model = load(args.model, dtype=args.dtype, device=device, progress=progress)
    return model, DecodeModel(model, weights=args.weights, fp32_copies=fp32_copies)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return args.prompt
    path = Path(args.prompt_file)
    if not path.is_file():
        raise ConfigError(f"{path}: no such prompt file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt (text streams to stdout)",
        description="Continue a prompt with an Eagle or Finch checkpoint.",
    )
    add_model_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="the text to continue")
    source.add_argument(
        "--prompt-file", default=None, metavar="FILE", help="read the prompt from a UTF-8 file"
    )
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)"
    )
    p.add_argument(
        "--stop-token",
        type=int,
        action="append",
        default=None,
        metavar="ID",
        help="stop at this token id (repeatable; default 0, end of text)",
    )
    p.add_argument("--load-state", metavar="FILE", help="continue from a state saved with --save-state")
    p.add_argument("--save-state", metavar="FILE", help="save the state after the generated text")
    add_sampling_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)  # bad values fail before the model loads
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt is None and args.prompt_file is None and args.load_state is None:
        raise ConfigError(
            "give --prompt TEXT or --prompt-file FILE (or --load-state FILE to continue a state)"
        )
    prompt = read_prompt(args) if (args.prompt is not None or args.prompt_file is not None) else ""
    model, decoder = load_model(args)
    tokenizer = load_tokenizer()
    context: Context | None = load_state(args.load_state, model) if args.load_state else None
    stop_tokens = (0,) if args.stop_token is None else tuple(args.stop_token)
    generation = start(
        model,
        tokenizer,
        prompt,
        args.max_new_tokens,
        context=context,
        stop=args.stop,
        stop_tokens=stop_tokens,
        decoder=decoder,
        sampling=sampling,
    )
    out = sys.stdout
    for _, piece in generation.stream():
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    if args.save_state:
        save_state(args.save_state, model, generation.context())
    return 0
