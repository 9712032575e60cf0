"""``eaglefinch finetune``: LoRA, state tuning or full fine-tuning of a checkpoint, and ``merge``."""

from __future__ import annotations

import argparse

from eaglefinch.cli.train import add_run_arguments, report, train_config
from eaglefinch.demo import demo_chat_path, resolve_model
from eaglefinch.errors import ConfigError
from eaglefinch.finetune.frozen import CHOICES as FROZEN_CHOICES

# Learning rates that suit each method (a run may override them): adapters start from zero and
# take a rate near RWKV-PEFT's; a state is a few tensors of order one, tuned like RWKV-LM's
# state tuning (which starts at 1.0); full fine-tuning stays close to the released weights.
LEARNING_RATES = {"lora": (2e-4, 2e-5), "state": (1.0, 1e-2), "full": (1e-5, 1e-5)}

EPILOG = """\
examples:
  eaglefinch finetune --model model.pth --data chat.jsonl --method lora --out runs/lora --steps 200
  eaglefinch finetune merge runs/lora --out merged.pth      (an official .pth with the adapters folded in)
  eaglefinch finetune --model model.pth --data chat.jsonl --method state --out runs/state --steps 100
  eaglefinch generate --model model.pth --load-state runs/state/state.safetensors \\
      --prompt $'User: Hi!\\n\\nAssistant:' --stop $'\\n\\n'

data (--data): a .txt document, or a .jsonl file of {"text": ...} lines and chat lines
  {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}, rendered in the
  World chat format ("User: ...\\n\\nAssistant: ...\\n\\n") with the loss on the assistant's replies
  only (--no-mask-prompt trains on every token); a binidx prefix is also accepted.

results in --out: adapter/ (lora, peft's layout), state.safetensors (state), model.pth (full),
with checkpoints, metrics.jsonl and loss.png as for `eaglefinch train`. A rerun with the same --out
continues from the latest checkpoint.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint: LoRA (peft), state tuning or full; merge adapters",
        description="Fine-tune an Eagle or Finch checkpoint on text or chat data, on the training loop of "
        "`eaglefinch train` (same checkpoints, exact resume, torchrun processes).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="merge", required=False)
    merge = actions.add_parser(
        "merge",
        help="fold a LoRA run's adapters into an official .pth",
        description="Fold the adapters of a `--method lora` run into the base weights and write an "
        "official-format checkpoint (the rwkv package and `eaglefinch generate` load it).",
    )
    merge.add_argument("run", help="the run folder of a --method lora fine-tuning (or its adapter/ folder)")
    merge.add_argument("--out", required=True, help="the merged checkpoint (.pth or .safetensors)")
    merge.add_argument("--model", help="the base checkpoint (default: the one the run was trained from)")
    merge.add_argument(
        "--dtype", choices=["fp32", "fp16", "bf16"], help="dtype of the written weights (default: the base's)"
    )
    merge.set_defaults(func=run_merge)

    data = p.add_argument_group("model, data and output")
    data.add_argument(
        "--model", help="the checkpoint to fine-tune (.pth or .safetensors; default: the demo's model)"
    )
    data.add_argument(
        "--data",
        help="a .txt or .jsonl file (see below), or a binidx prefix (default: the shipped demo chat file)",
    )
    data.add_argument("--out", help="run folder: checkpoints, metrics, loss plot and the result")
    data.add_argument(
        "--val-tokens", type=int, default=0, help="hold out examples with about N tokens for evaluation"
    )
    data.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (needs --val-tokens)")
    data.add_argument(
        "--no-mask-prompt",
        dest="mask_prompt",
        action="store_false",
        help="chat data: train on every token, not only the assistant's replies",
    )

    method = p.add_argument_group("method")
    method.add_argument("--method", choices=sorted(LEARNING_RATES), default="lora")
    method.add_argument("--lora-rank", type=int, default=16)
    method.add_argument("--lora-alpha", type=float, default=32.0)
    method.add_argument("--lora-dropout", type=float, default=0.0)
    method.add_argument(
        "--lora-targets",
        nargs="+",
        metavar="MODULE",
        default=(),
        help="projections to adapt (default: att.receptance att.key att.value att.gate att.output "
        "ffn.key ffn.value ffn.receptance)",
    )
    method.add_argument(
        "--frozen-dtype",
        choices=FROZEN_CHOICES,
        default="auto",
        help="lora/state: how the weights that do not train are stored (computed in fp32 either way); "
        "auto: in 16 bits where that is lossless, as for a bf16 checkpoint (default), fp32: as loaded, "
        "bf16/fp16: rounded to 16 bits",
    )
    method.add_argument(
        "--tune-shift", action="store_true", help="state tuning: also learn the token-shift vectors"
    )

    add_run_arguments(
        p,
        lr=None,
        lr_final=None,
        weight_decay=0.0,
        ctx_len=1024,
        batch_size=4,
        grad_cp=True,  # with the weights frozen, kept activations are most of the memory
        head_chunk=256,
    )
    p.set_defaults(func=run_finetune, action=None)


def run_finetune(args: argparse.Namespace) -> int:
    import logging
    import os

    from eaglefinch.train.loop import train

    if args.out is None:
        raise ConfigError(
            "give --out RUN, the run folder (e.g. eaglefinch finetune --model model.pth --data chat.jsonl "
            "--out runs/ft --steps 200)"
        )
    args.model = str(resolve_model(args.model))
    if args.data is None:
        args.data = str(demo_chat_path())
        print(f"no --data given: fine-tuning on the shipped demo chat file {args.data}")
    lr, lr_final = LEARNING_RATES[args.method]
    if args.lr_final is None:  # the method's own decay ratio, applied to the rate in use
        args.lr_final = lr_final * (args.lr or lr) / lr
    args.lr = args.lr or lr
    args.init_from = args.model
    config = train_config(
        args,
        method=args.method,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(args.lora_targets),
        tune_shift=args.tune_shift,
        frozen_dtype=args.frozen_dtype,
        mask_prompt=args.mask_prompt,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(report(result))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from eaglefinch.finetune.merge import merge_run

    path = merge_run(args.run, args.out, model=args.model, dtype=args.dtype)
    print(f"merged checkpoint (official format): {path}")
    return 0
