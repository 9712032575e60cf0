"""``eaglefinch train``: pretrain or continue training an Eagle or Finch model on a binidx corpus."""

from __future__ import annotations

import argparse

from eaglefinch.config import PRESETS, RWKVConfig
from eaglefinch.errors import ConfigError

ARCH_VERSIONS = {"eagle": "5.2", "finch": "6.0"}

EPILOG = """\
examples:
  eaglefinch data corpus --mixture mix.json
  eaglefinch train --data corpus --out runs/tiny --preset finch-tiny --steps 2000 --ctx-len 512
  eaglefinch train --data corpus --out runs/ft --init-from model.pth --lr 1e-5 --lr-final 1e-5 --steps 500
  torchrun --nproc_per_node 4 --no-python eaglefinch train --data corpus --out runs/ddp \\
      --preset finch-small --steps 10000    (a process per GPU with NCCL, or per CPU group with gloo)

A rerun with the same --out continues from the latest checkpoint (--no-resume starts over).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an Eagle or Finch model on a binidx corpus",
        description="Train an Eagle (RWKV-5.2) or Finch (RWKV-6) model with the official recipe: AdamW "
        "(betas 0.9/0.99, eps 1e-8), weight decay on matrices only, time_decay at 2x the "
        "learning rate, warmup then cosine or exponential decay, gradient clipping.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data and output")
    data.add_argument("--data", required=True, help="binidx corpus prefix (PREFIX.bin / PREFIX.idx)")
    data.add_argument("--out", required=True, help="run folder: checkpoints, metrics, loss plot, model.pth")
    data.add_argument(
        "--val-tokens", type=int, default=0, help="hold out about N tokens (random windows) for evaluation"
    )
    data.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (needs --val-tokens)")

    model = p.add_argument_group("model (a preset, explicit sizes, or --init-from)")
    model.add_argument(
        "--preset", choices=sorted(PRESETS), metavar="NAME", help=f"one of: {', '.join(sorted(PRESETS))}"
    )
    model.add_argument(
        "--arch", choices=sorted(ARCH_VERSIONS), default=None, help="eagle (5.2) or finch (6.0)"
    )
    model.add_argument("--n-layer", type=int)
    model.add_argument("--n-embd", type=int)
    model.add_argument("--head-size", type=int, default=64)
    model.add_argument("--vocab-size", type=int, default=65536)
    model.add_argument("--init-from", help="start from these weights (.pth or .safetensors)")

    add_run_arguments(p)
    p.set_defaults(func=run_train)


def add_run_arguments(p: argparse.ArgumentParser, **defaults) -> None:
    """The options ``train`` and ``finetune`` share: length, optimisation, checkpoints, logging."""
    length = p.add_argument_group("length (give at least one; the schedule spans the whole run)")
    length.add_argument("--steps", type=int, help="optimiser steps")
    length.add_argument("--minutes", type=float, help="a time budget")
    length.add_argument("--seconds", type=float, help="a time budget")
    length.add_argument(
        "--stop-at", type=int, help="end this session at this step (the schedule is unchanged)"
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--ctx-len", type=int, default=defaults.get("ctx_len", 512))
    opt.add_argument(
        "--batch-size",
        type=int,
        default=defaults.get("batch_size", 8),
        help="sequences per process per micro-step",
    )
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimiser step")
    opt.add_argument("--lr", type=float, default=defaults.get("lr", 6e-4))
    opt.add_argument("--lr-final", type=float, default=defaults.get("lr_final", 6e-5))
    opt.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 10))
    opt.add_argument("--schedule", choices=["cosine", "exp", "constant"], default="cosine")
    opt.add_argument(
        "--weight-decay", type=float, default=defaults.get("weight_decay", 0.1), help="on matrices only"
    )
    opt.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99), metavar=("B1", "B2"))
    opt.add_argument("--eps", type=float, default=1e-8)
    opt.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    opt.add_argument("--l2wrap", type=float, default=1e-4, help="RWKV-LM's logit penalty (0: off)")
    opt.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16 autocast, fp32, or auto (bf16 on GPUs that support it)",
    )
    opt.add_argument("--device", default="auto", help="auto, cpu, cuda")
    opt.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp", help="with several processes")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--threads", type=int, help="torch CPU threads per process")

    memory = p.add_argument_group("memory")
    if defaults.get("grad_cp"):
        memory.add_argument(
            "--no-grad-cp",
            dest="grad_cp",
            action="store_false",
            help="keep every block's activations for the backward (faster, more memory)",
        )
    else:
        memory.add_argument(
            "--grad-cp",
            action="store_true",
            help="recompute each block's activations in the backward (less memory, one more forward)",
        )
    memory.add_argument(
        "--head-chunk",
        type=int,
        default=defaults.get("head_chunk", 0),
        metavar="N",
        help="run the output head and loss N tokens at a time, recomputed in the backward, so the "
        f"full logits never exist (0: all at once; default {defaults.get('head_chunk', 0)})",
    )

    run = p.add_argument_group("checkpoints and logging")
    run.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (and at the end)")
    run.add_argument("--keep", type=int, default=2, help="checkpoints to keep (0: all)")
    run.add_argument("--log-every", type=int, default=1)
    run.add_argument("--no-resume", dest="resume", action="store_false", help="ignore checkpoints in --out")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    run.add_argument("--no-plot", dest="plot", action="store_false")


def model_config(args: argparse.Namespace) -> RWKVConfig | None:
    """The model the options describe, or None (then --init-from or a resumed checkpoint decides)."""
    explicit = args.n_layer is not None or args.n_embd is not None
    if args.preset and explicit:
        raise ConfigError("give either --preset or --n-layer/--n-embd, not both")
    if args.preset:
        config = RWKVConfig.preset(args.preset)
        if args.arch and ARCH_VERSIONS[args.arch] != config.version:
            raise ConfigError(f"--preset {args.preset} is {config.arch}, not {args.arch}")
        return config
    if explicit:
        if args.n_layer is None or args.n_embd is None:
            raise ConfigError("give both --n-layer and --n-embd")
        return RWKVConfig(
            ARCH_VERSIONS[args.arch or "finch"],
            n_layer=args.n_layer,
            n_embd=args.n_embd,
            head_size=args.head_size,
            vocab_size=args.vocab_size,
        )
    return None


def train_config(args: argparse.Namespace, **extra):
    """A TrainConfig from the parsed options (``extra``: fine-tuning fields)."""
    from eaglefinch.train.loop import TrainConfig

    if args.minutes is not None and args.seconds is not None:
        raise ConfigError("give --minutes or --seconds, not both")
    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    return TrainConfig(
        data=args.data,
        out=args.out,
        ctx_len=args.ctx_len,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        steps=args.steps,
        seconds=seconds,
        stop_at=args.stop_at,
        lr=args.lr,
        lr_final=args.lr_final,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        betas=tuple(args.betas),
        eps=args.eps,
        grad_clip=args.grad_clip,
        l2wrap=args.l2wrap,
        precision=args.precision,
        device=args.device,
        strategy=args.strategy,
        seed=args.seed,
        init_from=args.init_from,
        resume=args.resume,
        save_every=args.save_every,
        keep=args.keep,
        log_every=args.log_every,
        val_tokens=args.val_tokens,
        eval_every=args.eval_every,
        threads=args.threads,
        progress=args.progress,
        plot=args.plot,
        grad_cp=args.grad_cp,
        head_chunk=args.head_chunk,
        **extra,
    )


def report(result) -> str:
    lines = [
        f"trained to step {result.step} ({result.tokens:,} tokens); this session {result.seconds:.0f} s, "
        f"{result.tokens_per_second:,.0f} tokens/s"
    ]
    if result.first_loss is not None and result.loss is not None:
        lines.append(f"training loss: {result.first_loss:.3f} (first step) -> {result.loss:.3f} (last steps)")
    if result.val_loss_start is not None and result.val_loss_end is not None:
        lines.append(f"held-out loss: {result.val_loss_start:.3f} -> {result.val_loss_end:.3f}")
    elif result.val_loss_end is not None:
        lines.append(f"held-out loss: {result.val_loss_end:.3f}")
    if result.checkpoint is not None:
        lines.append(f"checkpoint: {result.checkpoint}")
    if result.model_path is not None:
        path = result.model_path
        if path.suffix == ".pth":
            lines.append(f"model (official .pth): {path}")
        elif path.suffix == ".safetensors":
            lines.append(f"tuned state (apply with generate --load-state): {path}")
        else:
            lines.append(f"LoRA adapter (peft; fold in with `eaglefinch finetune merge`): {path}")
    if result.plot_path is not None:
        lines.append(f"loss curve: {result.plot_path}")
    lines.append(f"metrics: {result.metrics_path}")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    import logging
    import os

    from eaglefinch.train.loop import train

    if int(os.environ.get("RANK", "0")) == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train(train_config(args), model_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(report(result))
    return 0
