"""``eval bpb`` and ``eval ppl``: formulas against direct computation, streaming, CLI output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eaglefinch.cli import main
from eaglefinch.errors import DataError
from eaglefinch.evaluation.bpb import (
    load_documents,
    score_languages,
    select_languages,
    tokenize_languages,
    udhr_documents,
)
from eaglefinch.evaluation.perplexity import perplexity


def direct_nll(model, tokens: list[int]) -> float:
    """Summed negative log-likelihood of tokens[1:] given the prefix, one forward pass."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    return float(F.cross_entropy(logits[0, :-1].double(), torch.tensor(tokens[1:]), reduction="sum"))


def test_bundled_udhr_has_every_language():
    docs = udhr_documents()
    assert len(docs) == 532 and len({d.lang for d in docs}) == 532
    assert all(0 < len(d.text.encode()) <= 2000 for d in docs)
    english = select_languages(docs, ["eng"])[0]
    assert english.text.startswith("Universal Declaration of Human Rights")


def test_unknown_language_is_one_clear_error():
    with pytest.raises(DataError, match="no documents for language"):
        select_languages(udhr_documents(), ["eng", "klingon"])


def test_bits_per_byte_formula(finch, tokenizer):
    docs = select_languages(udhr_documents(), ["eng", "jpn"])
    docs = [type(d)(d.lang, d.text[:120], d.title) for d in docs]
    scores, ids = tokenize_languages(docs, tokenizer.encode)
    score_languages(finch, "m", scores, ids, chunk_len=16)  # pieces of 16: the state carries over
    for score, doc in zip(scores, docs, strict=True):
        tokens = tokenizer.encode(doc.text)
        nll = direct_nll(finch, [0, *tokens])
        n_bytes = len(doc.text.encode("utf-8"))
        assert score.n_bytes == n_bytes and score.n_tokens == len(tokens)
        assert score.bits_per_byte("m") == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
        assert score.loss_per_token("m") == pytest.approx(nll / len(tokens), rel=1e-5)
        assert score.bytes_per_token == n_bytes / len(tokens)


def test_jsonl_documents_of_one_language_are_summed(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"text": "Hello there.", "lang": "en"}\n{"text": "Bonjour.", "lang": "fr"}\n'
        '{"text": "Good day.", "lang": "en"}\n'
    )
    scores, ids = tokenize_languages(load_documents(path, lang_field="lang"), tokenizer.encode)
    assert [s.lang for s in scores] == ["en", "fr"]
    assert scores[0].n_bytes == len("Hello there.") + len("Good day.")
    assert len(ids["en"]) == 2


def test_cli_bpb_two_checkpoints(tmp_path, finch_path, eagle_path, capsys):
    data = tmp_path / "two.jsonl"
    data.write_text(
        '{"text": "The quick brown fox.", "code": "eng"}\n{"text": "Le renard.", "code": "fra"}\n'
    )
    out, png = tmp_path / "bpb.json", tmp_path / "bpb.png"
    assert (
        main(
            [
                "eval",
                "bpb",
                str(finch_path),
                str(eagle_path),
                "--data",
                str(data),
                "--json",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "eng" in table and "fra" in table and "finch" in table and "eagle" in table
    result = json.loads(out.read_text())
    assert set(result["total"]["models"]) == {"finch", "eagle"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input_is_one_line(tmp_path, finch_path, capsys):
    assert main(["eval", "bpb", str(finch_path), "--data", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_ppl_text_file_streams_exactly(tmp_path, finch, tokenizer):
    text = "Perplexity is the exponential of the mean loss. " * 3
    path = tmp_path / "t.txt"
    path.write_text(text)
    tokens = [0, *tokenizer.encode(text)]
    result = perplexity(finch, path, chunk_len=7, progress=False)
    assert result.num_tokens == len(tokens) - 1
    assert result.nll == pytest.approx(direct_nll(finch, tokens), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.nll / result.num_tokens))


def test_ppl_binidx_and_max_tokens(tmp_path, finch, finch_path, capsys):
    from eaglefinch.train.binidx import BinidxWriter

    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(1, 65536, n), 0).astype(np.uint16) for n in (9, 14)]
    with BinidxWriter(tmp_path / "corpus") as writer:
        for doc in docs:
            writer.add_document(doc)
    stream = np.concatenate(docs).astype(np.int64).tolist()
    result = perplexity(finch, tmp_path / "corpus", chunk_len=5, progress=False)
    assert result.num_tokens == len(stream) - 1
    assert result.nll == pytest.approx(direct_nll(finch, stream), rel=1e-5)
    capped = perplexity(finch, tmp_path / "corpus.bin", max_tokens=10, progress=False)
    assert capped.num_tokens == 10
    assert capped.nll == pytest.approx(direct_nll(finch, stream[:11]), rel=1e-5)
    assert (
        main(["eval", "ppl", str(finch_path), str(tmp_path / "corpus"), "--json", str(tmp_path / "p.json")])
        == 0
    )
    assert json.loads((tmp_path / "p.json").read_text())["num_tokens"] == len(stream) - 1
