"""Long-context experiment: binning against hand-computed values, carried state equals one pass, smoke run."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eaglefinch.errors import DataError
from eaglefinch.experiments.long_context import run as lc_run
from eaglefinch.experiments.long_context.data import build_corpus, compact_vocabulary, read_documents
from eaglefinch.experiments.long_context.evaluate import (
    average_over_documents,
    bin_means,
    log_bin_edges,
    position_losses,
)
from eaglefinch.experiments.long_context.models import MODELS, apply_rope, make_model, rope_tables


def test_log_bin_edges_hand_computed():
    # logspace(0, log10(10), 3) = 1, 3.16, 10 -> edges 1, 3, 10: bins {1, 2} and {3..9}
    assert log_bin_edges(9, 2).tolist() == [1, 3, 10]
    # 99 positions, 2 bins: 1, 10, 100
    assert log_bin_edges(99, 2).tolist() == [1, 10, 100]
    # more bins than positions: duplicates merge, every position in exactly one bin
    edges = log_bin_edges(3, 10)
    assert edges[0] == 1 and edges[-1] == 4 and np.all(np.diff(edges) > 0)


def test_bin_means_hand_computed():
    centres, means = bin_means(np.arange(1.0, 10.0), 2)  # value p at position p
    np.testing.assert_allclose(means, [1.5, 6.0])  # (1+2)/2, (3+...+9)/7
    np.testing.assert_allclose(centres, [np.sqrt(2.0), np.sqrt(27.0)])


def test_average_over_documents_counts_only_documents_that_reach_a_position():
    mean, count = average_over_documents([np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0])])
    np.testing.assert_allclose(mean, [2.0, 3.0, 3.0])
    assert count.tolist() == [2, 2, 1]


def test_compact_vocabulary_by_frequency():
    assert compact_vocabulary([[5, 7, 5], [9, 7]]) == {5: 1, 7: 2, 9: 3}
    assert compact_vocabulary([[9, 7, 7], [5, 9, 9]]) == {9: 1, 7: 2, 5: 3}  # by count, then id
    assert compact_vocabulary([[9, 7, 7], [5, 9, 9]], size=3) == {9: 1, 7: 2}  # id 0 is the third


@pytest.mark.parametrize("name", MODELS)
def test_carried_state_equals_one_pass(name):
    torch.manual_seed(0)
    model = make_model(name, vocab_size=40, d_model=32, n_layer=2).eval()
    with torch.no_grad():  # untrained RWKV models start with zero output matrices: perturb them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    doc = torch.randint(0, 40, (45,))
    chunked = position_losses(model, doc, chunk=7)
    with torch.no_grad():
        hidden, _ = model.forward_hidden(doc[:-1].unsqueeze(0))
        whole = F.cross_entropy(model.head(hidden[0]), doc[1:], reduction="none")
    assert chunked.shape == (44,)
    torch.testing.assert_close(chunked, whole, atol=2e-5, rtol=2e-5)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        ci, si = rope_tables(1, 8, offset=i)
        cj, sj = rope_tables(1, 8, offset=j)
        return (apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum()

    torch.testing.assert_close(score(5, 2), score(1005, 1002), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 4))


def _corpus(tmp_path):
    words = "the lord said unto moses and aaron go forth into the land of egypt".split()
    rng = np.random.default_rng(0)
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i, n in enumerate([400, 30, 500, 60, 80]):
            f.write(json.dumps({"title": f"book{i}", "text": " ".join(rng.choice(words, n))}) + "\n")
    return path


def test_build_corpus_holds_out_long_documents(tmp_path):
    corpus = build_corpus(_corpus(tmp_path), n_heldout=2, min_heldout_tokens=300, seed=0)
    assert sorted(corpus.heldout_titles) == ["book0", "book2"]
    assert len(corpus.train) == 3
    assert all(int(d.max()) < corpus.vocab_size for d in corpus.train + corpus.heldout)
    with pytest.raises(DataError):
        build_corpus(_corpus(tmp_path), n_heldout=3, min_heldout_tokens=300, seed=0)


def test_missing_corpus_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_documents(tmp_path / "absent.jsonl")


def test_smoke_run_writes_json_plot_readme(tmp_path):
    parser = argparse.ArgumentParser()
    lc_run.add_arguments(parser)
    args = parser.parse_args(
        [
            "--corpus",
            str(_corpus(tmp_path)),
            "--d-model",
            "16",
            "--n-layer",
            "1",
            "--ctx",
            "32",
            "--batch",
            "2",
            "--steps",
            "2",
            "--heldout",
            "2",
            "--eval-len",
            "300",
            "--eval-chunk",
            "64",
            "--bins",
            "6",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert lc_run.run(args) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(result["models"]) == set(MODELS)
    for m in result["models"].values():
        assert list(m["ranges"]) == ["1-32", "33-64", "65-128", "129-256", "257-300"]
        assert all(np.isfinite(v) for v in m["ranges"].values())
    assert (tmp_path / "out" / "long_context.png").stat().st_size > 0
    assert "| Finch |" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    ("rises", "expected"),
    [
        ((0.3, 0.1, -0.05), "The paper's ordering shows"),
        ((-0.01, -0.02, -0.05), "RWKV-4 does not climb"),
        ((0.1, 0.3, 0.0), "does not show"),
    ],
)
def test_verdict_needs_order_and_a_climbing_rwkv4(rises, expected):
    models = {n: {"rise_past_ctx": r} for n, r in zip(("rwkv4", "eagle", "finch"), rises, strict=True)}
    assert expected in lc_run.verdict(models, 512)
