"""Scoring with state forking and streaming, against one full forward pass and the official package."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from eaglefinch import RWKVConfig, load
from eaglefinch.errors import ConfigError
from eaglefinch.evaluation import TokenScorer, score_continuations, score_document

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")

SMALL = RWKVConfig("6.0", n_layer=2, n_embd=64, vocab_size=300)


@pytest.fixture(scope="module")
def small_path(checkpoint_file):
    return checkpoint_file(SMALL, 5, "small.pth")


@pytest.fixture(scope="module")
def small(small_path):
    return load(small_path).eval()


def direct_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[i] | tokens[:i]) for i >= 1 from one whole-sequence forward pass, float64."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    logprobs = F.log_softmax(logits[0, :-1].double(), dim=-1)
    return logprobs.gather(1, torch.tensor(tokens[1:])[:, None]).squeeze(1)


def rand_tokens(n: int, seed: int, vocab: int = 300) -> list[int]:
    return torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("batch_size", [1, 2, 8], ids=lambda b: f"batch{b}")
def test_forked_continuations_equal_whole_sequence(small, batch_size):
    context = rand_tokens(9, 1)
    continuations = [rand_tokens(n, 10 + n) for n in (1, 4, 2, 7)]  # different lengths: padding in a batch
    scores = score_continuations(small, context, continuations, batch_size=batch_size, chunk_len=3)
    for cont, score in zip(continuations, scores, strict=True):
        expected = direct_logprobs(small, context + cont)[len(context) - 1 :]
        assert score.num_tokens == len(cont)
        assert score.logprob == pytest.approx(float(expected.sum()), abs=1e-4)


def test_is_greedy_matches_argmax(small):
    context = rand_tokens(5, 2)
    with torch.no_grad():
        logits, state = small(torch.tensor([context]))
        first = int(logits[0, -1].argmax())
        second = int(small(torch.tensor([[first]]), state)[0][0, -1].argmax())
    other = (first + 1) % SMALL.vocab_size
    scores = score_continuations(small, context, [[first, second], [first, (second + 1) % 300], [other]])
    assert [s.is_greedy for s in scores] == [True, False, False]


def test_one_token_context(small):
    cont = rand_tokens(4, 3)
    (score,) = score_continuations(small, [0], [cont])
    assert score.logprob == pytest.approx(float(direct_logprobs(small, [0] + cont).sum()), abs=1e-4)


def test_empty_inputs_are_rejected(small):
    with pytest.raises(ConfigError, match="context"):
        score_continuations(small, [], [[1]])
    with pytest.raises(ConfigError, match="continuation"):
        score_continuations(small, [1], [[2], []])


@pytest.mark.parametrize("pieces", [[50], [1, 49], [7, 13, 30]], ids=["whole", "1+49", "7+13+30"])
@pytest.mark.parametrize("chunk_len", [4, 64], ids=lambda c: f"chunk{c}")
def test_token_scorer_streams_exactly(small, pieces, chunk_len):
    tokens = rand_tokens(50, 4)
    scorer = TokenScorer(small, chunk_len)
    got, start = [], 0
    for n in pieces:
        got.append(scorer.feed(tokens[start : start + n]))
        start += n
    expected = direct_logprobs(small, tokens)
    torch.testing.assert_close(torch.cat(got), expected, atol=1e-4, rtol=0)
    assert scorer.num_scored == 49
    assert scorer.total_logprob == pytest.approx(float(expected.sum()), abs=1e-3)


def test_score_document_matches_official_package(small_path, small):
    """An independent oracle: the rwkv package's full-output logits on [0] + document."""
    rwkv_model = pytest.importorskip("rwkv.model", reason="the official rwkv package is a test dependency")
    official = rwkv_model.RWKV(model=str(small_path), strategy="cpu fp32", verbose=False)
    doc = rand_tokens(40, 6)
    logits, _ = official.forward([0] + doc, None, full_output=True)
    logprobs = F.log_softmax(logits[:-1].double(), dim=-1).gather(1, torch.tensor(doc)[:, None])
    total, count = score_document(small, doc, chunk_len=16)
    assert count == 40
    assert total == pytest.approx(float(logprobs.sum()), rel=1e-5)


def test_uniform_model_gives_log_vocab(small):
    """With a zero head every token has probability 1/V: the loss is ln V exactly (a formula oracle)."""
    model = load_zero_head(small)
    total, count = score_document(model, rand_tokens(20, 7))
    assert -total / count == pytest.approx(math.log(SMALL.vocab_size), rel=1e-6)


def load_zero_head(model):
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.head.weight.zero_()
    return clone
