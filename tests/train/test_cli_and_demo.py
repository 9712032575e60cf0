"""``eaglefinch data`` / ``train`` / ``demo`` from the command line, and the data shipped for the demo."""

from __future__ import annotations

import glob
import gzip
import json
import sys
from pathlib import Path

import pytest

from eaglefinch.cli import main
from eaglefinch.train.binidx import BinidxReader
from eaglefinch.train.mixture import Mixture, package_data_dir

pytest.importorskip("eaglefinch.tokenizer")
ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_data_builds_and_describes_a_corpus(tmp_path, capsys):
    from eaglefinch.tokenizer import WorldTokenizer

    (tmp_path / "a.txt").write_text("In the beginning God created the heaven and the earth.", "utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "Tous les êtres humains naissent libres."}) + "\n", "utf-8"
    )
    prefix = tmp_path / "out" / "c"
    assert (
        main(["data", str(prefix), str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), "--no-progress"]) == 0
    )
    assert "2 documents" in capsys.readouterr().out
    reader = BinidxReader(prefix)
    tok = WorldTokenizer()
    texts = sorted(tok.decode(reader.document(d)[:-1].tolist()) for d in range(reader.num_documents))
    assert texts == [
        "In the beginning God created the heaven and the earth.",
        "Tous les êtres humains naissent libres.",
    ]
    assert main(["data", str(prefix), "--info"]) == 0
    assert "2 documents" in capsys.readouterr().out


def test_data_errors_are_one_line(tmp_path, capsys):
    assert "nothing to tokenize" in one_line_error(capsys, ["data", str(tmp_path / "c")])
    assert "does not exist" in one_line_error(
        capsys, ["data", str(tmp_path / "c"), str(tmp_path / "missing.txt")]
    )
    (tmp_path / "m.json").write_text("{not json", "utf-8")
    assert "not valid JSON" in one_line_error(
        capsys, ["data", str(tmp_path / "c"), "--mixture", str(tmp_path / "m.json")]
    )
    assert "no corpus" in one_line_error(capsys, ["data", str(tmp_path / "nothing"), "--info"])


def test_shipped_data_is_small_licensed_and_packaged():
    data = package_data_dir()
    ours = [data / name for name in ("kjv.jsonl.gz", "demo_mixture.json", "README.md", "LICENSE")]
    assert all(p.is_file() for p in ours)
    assert sum(p.stat().st_size for p in ours) < 300_000
    records = [json.loads(line) for line in gzip.open(data / "kjv.jsonl.gz", "rt", encoding="utf-8")]
    assert len(records) == 11 and all(isinstance(r["text"], str) and r["text"] for r in records)
    shipped = [p for p in data.rglob("*") if p.is_file()]
    licence = (data / "LICENSE").read_text("utf-8")
    assert "public domain" in licence and "MIT License" in licence
    mixture = Mixture.from_file(data / "demo_mixture.json")  # every path exists (the stdlib's too)
    assert mixture.shares == pytest.approx({"english": 0.70, "multilingual": 0.15, "code": 0.15})
    # the package-data globs of pyproject.toml (expanded as setuptools does) take every shipped file
    if sys.version_info >= (3, 11):
        import tomllib

        config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
        packaged = set()
        for pattern in config["tool"]["setuptools"]["package-data"]["eaglefinch"]:
            packaged |= set(glob.glob(pattern, root_dir=data.parent, recursive=True))
        for path in shipped:
            assert path.relative_to(data.parent).as_posix() in packaged, path


def test_demo_runs_end_to_end(tmp_path, capsys):
    from eaglefinch.demo import DemoOptions, run_demo

    # the demo's steps on a small budget: two batches of 2 x 32 tokens held out, 4 tokens sampled
    small = {
        "seconds": 1,
        "ctx_len": 32,
        "batch_size": 2,
        "eval_batches": 2,
        "sample_tokens": 4,
        "progress": False,
    }
    report = run_demo(DemoOptions(out=str(tmp_path / "demo"), **small))
    out = capsys.readouterr().out
    assert report == json.loads((tmp_path / "demo" / "demo.json").read_text("utf-8"))
    assert report["steps"] >= 1 and report["sample"]
    assert Path(report["model_path"]).exists() and Path(report["loss_plot"]).exists()
    assert Path(report["checkpoint"]).is_dir()
    assert report["val_loss_before"] > 0 and report["val_loss_after"] > 0
    for needle in ("held-out loss", "sample", "checkpoint:", "loss plot:", report["prompt"]):
        assert needle in out
    corpus = json.loads((tmp_path / "demo" / "data" / "demo.json").read_text("utf-8"))
    shares = {name: s["share"] for name, s in corpus["sources"].items()}
    assert shares == pytest.approx({"english": 0.70, "multilingual": 0.15, "code": 0.15}, abs=1e-3)
    # a second run reuses the corpus and starts the training over
    run_demo(DemoOptions(out=str(tmp_path / "demo"), arch="eagle", **small))
    assert "reusing" in capsys.readouterr().out
    assert json.loads((tmp_path / "demo" / "demo.json").read_text("utf-8"))["model"]["version"] == "5.2"


def test_demo_errors(capsys, tmp_path):
    assert "positive" in one_line_error(capsys, ["demo", "--seconds", "0", "--out", str(tmp_path)])
    assert "not both" in one_line_error(
        capsys, ["demo", "--seconds", "5", "--minutes", "1", "--out", str(tmp_path)]
    )
