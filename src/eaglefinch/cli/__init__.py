"""The ``eaglefinch`` console script: one entry point, one module per subcommand.

Each module in this package that defines ``register(subparsers)`` adds a subcommand; the parser
it registers sets ``func`` to a plain function taking the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from eaglefinch.errors import EaglefinchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eaglefinch",
        description="RWKV Eagle (5.2) and Finch (6.0) in plain PyTorch.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except EaglefinchError as error:
        print(f"eaglefinch {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"eaglefinch {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
