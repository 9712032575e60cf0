"""``eaglefinch bench mqar``: the MQAR sweep of the paper's Figure 4, resumable.

Usage::

    eaglefinch bench mqar                       # the reduced default grid (a CPU run, one process per core)
    eaglefinch bench mqar --full --device cuda  # the paper grid: 100k examples, 64 epochs
    eaglefinch bench mqar --models finch,eagle --seq-lens 256 --dims 64,128
    eaglefinch bench mqar --report-only         # redraw the table and figure from runs.jsonl

Every finished run is appended to ``<out>/runs.jsonl`` at once; a run already there with the same
training settings is not repeated, so a killed sweep resumes where it stopped. For each
(model, T, d_model) the learning rates are tried in the order given and the cell ends at the
first one that reaches the target accuracy (a later rate could not score higher than "solved").
The report (``results.json``, ``results.md``, ``mqar.png``) is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eaglefinch.errors import ConfigError
from eaglefinch.experiments import environment_stamp
from eaglefinch.experiments.mqar import report
from eaglefinch.experiments.mqar.data import check_sizes
from eaglefinch.experiments.mqar.models import MAMBA_HINT, MODELS, mamba_available
from eaglefinch.experiments.mqar.train import Cell, TrainConfig, make_data, train_run

HELP = "multi-query associative recall: RWKV-4, Eagle, Finch, attention and Mamba (paper Figure 4)"

# The paper grid (Zoology's MQAR sweep): N key-value pairs per sequence length, batch per T.
PAPER_KV_PAIRS = {64: 4, 128: 8, 256: 16, 512: 64}
PAPER_BATCH = {64: 512, 128: 512, 256: 256, 512: 128}
PAPER_DIMS = (64, 128, 256, 512)
PAPER_LRS = (1e-4, 4.6e-4, 2.2e-3, 1e-2)  # logspace(-4, -2, 4), rounded
PAPER_TRAIN = TrainConfig(num_train=100_000, num_test=3_000, epochs=64)

# The reduced default for a 2-core CPU (about 30 minutes on an idle one: --jobs runs the models
# in one process per core, finch+attention and eagle+rwkv4): the
# easiest paper cell, T = 64 with 4 pairs, at width 64, where the GPU sweep separates the mixers
# (RWKV-4 against Eagle and Finch), with the GPU sweep's data, batch and rate (20,000 examples,
# batch 256, lr 1e-3) for at most 8 epochs (632 steps; Eagle and Finch solved the cell there after
# 474 and 553). Fewer examples at a smaller batch did not get past chance in 750 steps. Mamba is left
# out of the CPU default: transformers' pure-PyTorch Mamba mixer takes 12x the Finch WKV's CPU time
# for forward+backward at T = 2048 (benchmarks/results/kernels); name it in --models to run it.
DEFAULT_SEQ_LENS = (64,)
DEFAULT_DIMS = (64,)
DEFAULT_LRS = (1e-3,)
DEFAULT_TRAIN = TrainConfig(num_train=20_000, num_test=1_000, epochs=8, batch_size=256)
DEFAULT_OUT = Path("benchmarks/results/mqar/default")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _seq_lens(text: str) -> list[tuple[int, int]]:
    """``64,128`` (N from the paper grid) or ``64:4,96:6`` (explicit N)."""
    cells = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if ":" in item:
                t, n = (int(x) for x in item.split(":"))
            else:
                t = int(item)
                if t not in PAPER_KV_PAIRS:
                    raise argparse.ArgumentTypeError(
                        f"T={t} is not in the paper grid {sorted(PAPER_KV_PAIRS)}; give it as T:N"
                    )
                n = PAPER_KV_PAIRS[t]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected T or T:N items, got {item!r}") from None
        cells.append((t, n))
    return cells


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``eaglefinch bench mqar``."""
    parser.description = __doc__
    parser.add_argument(
        "--full", action="store_true", help="the paper grid and training budget (meant for a GPU)"
    )
    parser.add_argument(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        help=f"comma-separated, from {','.join(MODELS)} (default: all available, but mamba not on CPU)",
    )
    parser.add_argument(
        "--seq-lens", type=_seq_lens, help="T or T:N items (default 64; --full: 64,128,256,512)"
    )
    parser.add_argument("--dims", type=_int_list, help="d_model values (default 64; --full: 64,128,256,512)")
    parser.add_argument("--lrs", type=_float_list, help="learning rates, tried in order (default 1e-3)")
    parser.add_argument("--num-train", type=int, help="training examples per cell")
    parser.add_argument("--num-test", type=int, help="held-out examples per cell")
    parser.add_argument("--epochs", type=int, help="passes over the training set (early stop at the target)")
    parser.add_argument("--batch-size", type=int, help="examples per step (--full: the paper's, by T)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"results folder (default {DEFAULT_OUT}, --full: .../full)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="processes to split the models across, one torch thread each (default on CPU: the "
        "number of cores; on CUDA: 1, which runs in this process)",
    )
    # internal: this process is one of --jobs workers (its progress bar's line; no report)
    parser.add_argument("--worker-position", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--all-lrs", action="store_true", help="try every learning rate even after one reaches the target"
    )
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from runs.jsonl")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def plan(args: argparse.Namespace) -> tuple[list[str], list[tuple[int, int]], list[int], list[float], dict]:
    """(models, cells (T, N), dims, lrs, training settings per T) from the options."""
    if args.models is None:
        models = [m for m in MODELS if m != "mamba" or mamba_available()]
        if "mamba" not in models:
            print(f"eaglefinch bench mqar: leaving out mamba: {MAMBA_HINT}", file=sys.stderr)
        elif not args.full and args.device == "cpu":
            models.remove("mamba")
            print(
                "eaglefinch bench mqar: leaving Mamba out of the CPU default (its pure-PyTorch scan is "
                "slow on CPU); add it with --models rwkv4,eagle,finch,attention,mamba",
                file=sys.stderr,
            )
    else:
        models = list(dict.fromkeys(args.models))
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown MQAR model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
        if "mamba" in models and not mamba_available():
            raise ConfigError(f"model 'mamba' needs transformers: {MAMBA_HINT}, or leave it out of --models")
    cells = args.seq_lens or (
        sorted(PAPER_KV_PAIRS.items()) if args.full else [(t, PAPER_KV_PAIRS[t]) for t in DEFAULT_SEQ_LENS]
    )
    dims = args.dims or list(PAPER_DIMS if args.full else DEFAULT_DIMS)
    lrs = args.lrs or list(PAPER_LRS if args.full else DEFAULT_LRS)
    for t, n in cells:
        check_sizes(t, n)
    if any(d <= 0 for d in dims) or any(lr <= 0 for lr in lrs):
        raise ConfigError("--dims and --lrs must be positive")
    base = PAPER_TRAIN if args.full else DEFAULT_TRAIN
    overrides = {
        name: getattr(args, name)
        for name in ("num_train", "num_test", "epochs", "batch_size")
        if getattr(args, name) is not None
    }
    for name, value in overrides.items():
        if value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    configs = {}
    for t, _ in cells:
        batch = PAPER_BATCH.get(t, base.batch_size) if args.full else base.batch_size
        configs[t] = base.__class__(**{**base.to_dict(), "batch_size": batch, "seed": args.seed, **overrides})
    return models, cells, dims, lrs, configs


def _key(record: dict) -> tuple:
    return (
        record["model"],
        record["seq_len"],
        record["num_kv_pairs"],
        record["d_model"],
        record["lr"],
        json.dumps(record["config"], sort_keys=True),
    )


def load_runs(path: Path) -> list[dict]:
    """Records of ``runs.jsonl``; a line cut short by a kill is skipped."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def _append(path: Path, record: dict) -> None:
    # One write of one line with O_APPEND: a kill leaves at worst a partial last line, skipped on load.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# Relative cost of one MQAR run per model on CPU (the default run's wall times), to balance --jobs.
CPU_COST = {"mamba": 8.0, "finch": 2.2, "eagle": 2.0, "rwkv4": 1.0, "attention": 0.4}


def split_models(models: list[str], jobs: int) -> list[list[str]]:
    """Models into at most ``jobs`` groups of similar total cost (longest first, to the lightest
    group), each group keeping the models' given order."""
    groups: list[list[str]] = [[] for _ in range(min(jobs, len(models)))]
    load = [0.0] * len(groups)
    for model in sorted(models, key=lambda m: -CPU_COST.get(m, 1.0)):
        i = load.index(min(load))
        groups[i].append(model)
        load[i] += CPU_COST.get(model, 1.0)
    return [[m for m in models if m in g] for g in groups]


def _worker_argv(args: argparse.Namespace, models: list[str], position: int, out: Path) -> list[str]:
    """The command line of one --jobs worker: these options, these models, one thread."""
    argv = ["bench", "mqar", "--models", ",".join(models), "--threads", "1", "--jobs", "1"]
    argv += ["--worker-position", str(position), "--out", str(out), "--device", args.device]
    argv += ["--seed", str(args.seed)]
    if args.full:
        argv.append("--full")
    if args.seq_lens:
        argv += ["--seq-lens", ",".join(f"{t}:{n}" for t, n in args.seq_lens)]
    if args.dims:
        argv += ["--dims", ",".join(map(str, args.dims))]
    if args.lrs:
        argv += ["--lrs", ",".join(repr(lr) for lr in args.lrs)]
    for name in ("num_train", "num_test", "epochs", "batch_size"):
        if getattr(args, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.all_lrs:
        argv.append("--all-lrs")
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def _run_jobs(args: argparse.Namespace, groups: list[list[str]], out: Path) -> None:
    """One worker process per group, all appending to ``out/runs.jsonl``; wait for all."""
    launcher = "import sys; from eaglefinch.cli import main; sys.exit(main(sys.argv[1:]))"
    print(
        f"eaglefinch bench mqar: {len(groups)} processes, one thread each: "
        + "; ".join(",".join(g) for g in groups),
        file=sys.stderr,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-c", launcher, *_worker_argv(args, g, i, out)], env=env)
        for i, g in enumerate(groups)
    ]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:  # the finished runs are in runs.jsonl: a rerun resumes
        for w in workers:
            w.terminate()
        raise
    failed = [",".join(g) for g, code in zip(groups, codes, strict=True) if code != 0]
    if failed:
        raise ConfigError(f"MQAR worker(s) for {'; '.join(failed)} failed; rerun to resume the rest")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the sweep, then write the report."""
    models, cells, dims, lrs, configs = plan(args)
    out = args.out or (DEFAULT_OUT.parent / "full" if args.full else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available")
    device = torch.device(args.device)
    stamp = environment_stamp(args.device)
    wanted = {(t, n) for t, n in cells}

    def write_report() -> None:
        current = {json.dumps(c.to_dict(), sort_keys=True) for c in configs.values()}
        selected = [
            r
            for r in load_runs(runs_path)
            if json.dumps(r["config"], sort_keys=True) in current
            and (r["seq_len"], r["num_kv_pairs"]) in wanted
            and r["model"] in models
            and r["d_model"] in dims
        ]
        report.write(
            out,
            selected,
            stamp,
            {
                "models": models,
                "cells": cells,
                "dims": dims,
                "lrs": lrs,
                "configs": {t: c.to_dict() for t, c in configs.items()},
                "command": " ".join(sys.argv),
            },
        )

    if args.report_only:
        write_report()
        print(f"report rewritten in {out}")
        return 0
    jobs = args.jobs or (1 if args.device != "cpu" else os.cpu_count() or 1)
    if jobs < 1:
        raise ConfigError(f"--jobs must be positive, got {jobs}")
    if jobs > 1 and len(models) > 1 and args.worker_position is None:
        _run_jobs(args, split_models(models, jobs), out)
        write_report()
        print(f"results in {out}")
        return 0

    done = {_key(r): r for r in load_runs(runs_path)}
    for t, n in cells:
        config = configs[t]
        data = None
        for d in dims:
            for model in models:
                for lr in lrs:
                    probe = {
                        "model": model,
                        "seq_len": t,
                        "num_kv_pairs": n,
                        "d_model": d,
                        "lr": lr,
                        "config": config.to_dict(),
                    }
                    cell_runs = [
                        r for k, r in done.items() if k[:4] == (model, t, n, d) and k[5] == _key(probe)[5]
                    ]
                    if _key(probe) in done:
                        continue
                    if not args.all_lrs and any(r["accuracy"] >= config.target_accuracy for r in cell_runs):
                        continue  # this cell is solved at an earlier learning rate
                    if data is None:
                        data = tuple(
                            type(part)(part.inputs.to(device), part.labels.to(device))
                            for part in make_data(Cell(model, t, n, d), config)
                        )
                    record = train_run(
                        Cell(model, t, n, d),
                        lr,
                        config,
                        data,
                        progress=not args.no_progress,
                        device=device,
                        position=args.worker_position or 0,
                    )
                    record["config"] = config.to_dict()
                    record["device"] = args.device
                    _append(runs_path, record)
                    done[_key(record)] = record
                    tqdm.write(
                        f"{model:9s} T={t:4d} N={n:3d} d={d:4d} lr={lr:.1e}: "
                        f"accuracy {record['accuracy']:.3f} "
                        f"in {record['steps']} steps, {record['wall_s']:.0f} s"
                    )
                    if args.worker_position is None:  # workers leave the report to their parent
                        write_report()
    if args.worker_position is None:
        write_report()
        print(f"results in {out}")
    return 0
