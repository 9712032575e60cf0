"""The MQAR sweep: the CLI wiring, one-line errors, resuming, and the report files."""

from __future__ import annotations

import json

import pytest

from eaglefinch.cli import build_parser, main
from eaglefinch.experiments.mqar import sweep

TINY = [
    "--seq-lens",
    "16:2",
    "--dims",
    "8",
    "--num-train",
    "32",
    "--num-test",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--no-progress",
    "--lrs",
    "1e-3,3e-3",
]


def test_sweep_writes_report_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "mqar"
    assert main(["bench", "mqar", "--models", "attention", "--out", str(out), *TINY]) == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["model"], r["lr"]) for r in runs] == [("attention", 1e-3), ("attention", 3e-3)]
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 and results["environment"]["torch"]
    assert "| Attention |" in (out / "results.md").read_text()
    assert (out / "mqar.png").stat().st_size > 0

    # a second call finds every run done and trains nothing
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was repeated")

    monkeypatch.setattr(sweep, "train_run", no_training)
    assert main(["bench", "mqar", "--models", "attention", "--out", str(out), *TINY]) == 0
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2


def test_resume_skips_a_cut_line_and_a_solved_cell(tmp_path, monkeypatch):
    """A partial last line (a kill mid-write) is ignored; a cell solved at one rate skips the next."""
    out = tmp_path / "mqar"
    out.mkdir()
    config = sweep.DEFAULT_TRAIN.__class__(num_train=32, num_test=16, epochs=1, batch_size=16)
    solved = {
        "model": "attention",
        "seq_len": 16,
        "num_kv_pairs": 2,
        "d_model": 8,
        "lr": 1e-3,
        "accuracy": 1.0,
        "steps": 2,
        "epochs": 1,
        "wall_s": 0.1,
        "config": config.to_dict(),
    }
    (out / "runs.jsonl").write_text(json.dumps(solved) + "\n" + '{"model": "att')
    calls = []
    monkeypatch.setattr(sweep, "train_run", lambda *a, **k: calls.append(a) or {})
    assert main(["bench", "mqar", "--models", "attention", "--out", str(out), *TINY]) == 0
    assert calls == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "hyena"], "unknown MQAR model"),
        (["--models", "attention", "--seq-lens", "15:2"], "must be even"),
        (["--models", "attention", "--dims", "0"], "must be positive"),
    ],
)
def test_bad_options_give_one_line(tmp_path, capsys, argv, message):
    assert main(["bench", "mqar", "--out", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_paper_grid():
    args = build_parser().parse_args(["bench", "mqar", "--full", "--models", "finch"])
    models, cells, dims, lrs, configs = sweep.plan(args)
    assert cells == [(64, 4), (128, 8), (256, 16), (512, 64)] and dims == [64, 128, 256, 512]
    assert [configs[t].batch_size for t, _ in cells] == [512, 512, 256, 128]
    assert configs[64].num_train == 100_000 and configs[64].epochs == 64 and len(lrs) == 4


def test_cpu_default_is_the_reduced_grid_without_mamba(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    models, cells, dims, lrs, configs = sweep.plan(parser.parse_args([]))
    assert models == ["rwkv4", "eagle", "finch", "attention"]
    assert "leaving" in capsys.readouterr().err  # says why Mamba is not there
    assert cells == [(64, 4)] and dims == [64] and lrs == [1e-3]
    steps = -(-configs[64].num_train // configs[64].batch_size) * configs[64].epochs
    assert steps == 632
    full_models, full_cells, *_ = sweep.plan(parser.parse_args(["--full"]))
    assert full_cells == [(64, 4), (128, 8), (256, 16), (512, 64)]
    if sweep.mamba_available():
        assert "mamba" in full_models
        assert sweep.plan(parser.parse_args(["--models", "mamba"]))[0] == ["mamba"]


def test_split_models_balances_cost():
    """Longest first onto the lightest group: finch (2.2) | eagle (2.0), rwkv4 (1.0) joins eagle's
    group (2.0 < 2.2), attention (0.4) finch's (2.2 < 3.0); each group in the given order."""
    groups = sweep.split_models(["rwkv4", "eagle", "finch", "attention"], 2)
    assert groups == [["finch", "attention"], ["rwkv4", "eagle"]]
    assert sweep.split_models(["finch", "eagle"], 8) == [["finch"], ["eagle"]]
    assert sweep.split_models(["finch", "eagle", "attention"], 1) == [["finch", "eagle", "attention"]]


def test_worker_command_line_plans_the_same_sweep(tmp_path):
    """A --jobs worker's options, parsed again, give the parent's cells, widths, rates and
    training settings, for its own models."""
    argv = ["bench", "mqar", "--out", str(tmp_path), *TINY, "--seed", "3", "--all-lrs"]
    parent = build_parser().parse_args(argv)
    worker_argv = sweep._worker_argv(parent, ["attention"], 1, tmp_path)
    worker = build_parser().parse_args(worker_argv)
    assert worker.worker_position == 1 and worker.threads == 1 and worker.all_lrs
    parent_plan, worker_plan = sweep.plan(parent), sweep.plan(worker)
    assert worker_plan[0] == ["attention"]
    assert worker_plan[1:4] == parent_plan[1:4]
    assert {t: c.to_dict() for t, c in worker_plan[4].items()} == {
        t: c.to_dict() for t, c in parent_plan[4].items()
    }


def test_jobs_split_the_models_across_processes(tmp_path):
    """--jobs 2 trains each model in its own process; the parent writes one report of both."""
    out = tmp_path / "mqar"
    argv = ["bench", "mqar", "--models", "attention,rwkv4", "--jobs", "2", "--out", str(out), *TINY]
    assert main([*argv[:-2], "--lrs", "1e-3"]) == 0
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["model"] for r in runs) == ["attention", "rwkv4"]
    table = (out / "results.md").read_text()
    assert "| Attention |" in table and "| RWKV-4 |" in table
