"""``eaglefinch demo``: train a tiny model on shipped data for a few minutes, then sample from it."""

from __future__ import annotations

import argparse

from eaglefinch.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a tiny Finch on shipped data for ~3 minutes (CPU, no download), then sample",
        description="Build a small corpus from data shipped with eaglefinch (about 70% English, 15% "
        "multilingual, 15% code), train a tiny Finch or Eagle on it on the CPU with a progress "
        "bar, print a sample, and say where the checkpoint and the loss plot went.",
    )
    p.add_argument("--arch", choices=["finch", "eagle"], default="finch")
    p.add_argument("--size", choices=["tiny", "small"], default="tiny", help="tiny: L2-D128; small: L4-D256")
    p.add_argument("--minutes", type=float, help="training time (default 3)")
    p.add_argument("--seconds", type=float, help="training time in seconds")
    p.add_argument("--out", default="eaglefinch-demo", help="folder for the corpus, run and plot")
    p.add_argument("--prompt", default=None, help="text to continue after training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eaglefinch.demo import PROMPT, DemoOptions, run_demo

    if args.minutes is not None and args.seconds is not None:
        raise ConfigError("give --minutes or --seconds, not both")
    seconds = 180.0
    if args.minutes is not None:
        seconds = args.minutes * 60
    elif args.seconds is not None:
        seconds = args.seconds
    run_demo(
        DemoOptions(
            arch=args.arch,
            size=args.size,
            seconds=seconds,
            out=args.out,
            prompt=args.prompt or PROMPT,
            seed=args.seed,
            progress=args.progress,
        )
    )
    return 0
