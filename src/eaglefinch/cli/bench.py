"""``eaglefinch bench <experiment>``: the paper's experiments and the benchmarks, one subcommand each.

An experiment is a module exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; adding one is one line in ``EXPERIMENTS``. Modules are imported only when
the parser is built, and an experiment whose optional dependencies are missing says so when run.
"""

from __future__ import annotations

import argparse
import importlib

# subcommand name -> module path
EXPERIMENTS: dict[str, str] = {
    "mqar": "eaglefinch.experiments.mqar.sweep",
    "long-context": "eaglefinch.experiments.long_context.run",
    "kernels": "eaglefinch.experiments.kernels",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and one sub-subcommand per entry of ``EXPERIMENTS``."""
    bench = subparsers.add_parser("bench", help="run a paper experiment or benchmark")
    experiments = bench.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    bench.set_defaults(func=lambda args: _missing(bench))
    for name, module_path in EXPERIMENTS.items():
        module = importlib.import_module(module_path)
        parser = experiments.add_parser(
            name, help=module.HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


def _missing(bench: argparse.ArgumentParser) -> int:
    bench.print_help()
    return 2
