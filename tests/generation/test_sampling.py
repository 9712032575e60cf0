"""Sampling: the filtered distribution against the official pipeline, penalties by hand, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eaglefinch.errors import ConfigError
from eaglefinch.generation import sampling
from eaglefinch.generation.sampling import (
    Penalties,
    SamplingConfig,
    ban,
    draw,
    filtered_probs,
    make_generators,
    penalty_weight,
    sample,
    top_p_threshold,
)


@pytest.fixture(scope="module")
def pipeline_probs():
    """``probs(logits, temperature, top_p, top_k)``: the distribution rwkv.utils.PIPELINE draws from."""
    rwkv_utils = pytest.importorskip("rwkv.utils", reason="the official rwkv package is a test dependency")
    pipeline = rwkv_utils.PIPELINE.__new__(rwkv_utils.PIPELINE)  # sample_logits needs no model or tokenizer

    def probs(logits: torch.Tensor, **kwargs) -> np.ndarray:
        seen = {}
        original = np.random.choice

        def capture(a, p):
            seen["p"] = np.array(p, dtype=np.float64)
            return 0

        np.random.choice = capture
        try:
            pipeline.sample_logits(logits.clone(), **kwargs)
        finally:
            np.random.choice = original
        return seen["p"]

    return probs


SETTINGS = [
    dict(temperature=1.0, top_p=0.85, top_k=0),
    dict(temperature=0.7, top_p=0.5, top_k=0),
    dict(temperature=1.5, top_p=0.95, top_k=0),
    dict(temperature=1.0, top_p=0.99, top_k=7),
    dict(temperature=0.3, top_p=0.2, top_k=3),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "T{temperature}-p{top_p}-k{top_k}".format(**s))
def test_filtered_distribution_matches_the_official_pipeline(settings, pipeline_probs):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 500, generator=gen) * 3
    ours = filtered_probs(logits, SamplingConfig(**settings))
    for row in range(2):
        theirs = pipeline_probs(logits[row], **settings)
        assert np.allclose(ours[row].double().numpy(), theirs, atol=1e-6)


def test_min_p_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08]])
    out = filtered_probs(probs.log(), SamplingConfig(min_p=0.2))  # keep p >= 0.1
    assert torch.allclose(out, torch.tensor([[0.5, 0.3, 0.12, 0.0]]) / 0.92)
    out = filtered_probs(
        probs.log(), SamplingConfig(min_p=0.2, temperature=0.5)
    )  # then square and renormalise
    kept = torch.tensor([[0.25, 0.09, 0.0144, 0.0]])
    assert torch.allclose(out, kept / kept.sum())


def test_top_k_and_top_p_by_hand():
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    assert torch.allclose(
        filtered_probs(probs.log(), SamplingConfig(top_k=2)), torch.tensor([[0, 4 / 7, 0, 3 / 7]])
    )
    # cumulative 0.4, 0.7, 0.9: top_p 0.65 first reached at the second token, so 0.4 and 0.3 stay
    assert torch.allclose(
        filtered_probs(probs.log(), SamplingConfig(top_p=0.65)), torch.tensor([[0, 4 / 7, 0, 3 / 7]])
    )


def test_greedy_is_argmax_and_ignores_the_filters():
    logits = torch.randn(4, 100)
    config = SamplingConfig(temperature=0, top_p=0.1, top_k=5)
    assert torch.equal(sample(logits, config, [None] * 4), logits.argmax(-1))


def test_banned_tokens_are_never_drawn():
    logits = torch.zeros(3, 10)
    logits[:, 4] = 10
    config = SamplingConfig(banned_tokens=(4, 5), seed=0)
    gens = make_generators(config, 3)
    for _ in range(50):
        tokens = sample(ban(logits.clone(), config.banned_tokens), config, gens)
        assert not ({4, 5} & set(tokens.tolist()))


def test_draws_follow_the_distribution():
    """5,000 draws of a 4-way distribution: frequencies within 4 standard errors."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    config = SamplingConfig(seed=3)
    gens = make_generators(config, 1)
    n = 5000
    draws = torch.stack([sample(p.log()[None], config, gens) for _ in range(n)]).flatten()
    freq = torch.bincount(draws, minlength=4).double() / n
    assert ((freq - p.double()).abs() < 4 * (p.double() * (1 - p.double()) / n).sqrt()).all()


def test_seeds_reproduce_and_rows_are_independent():
    logits = torch.randn(3, 1000)
    config = SamplingConfig(seed=11)
    a = [sample(logits, config, g).tolist() for g in [make_generators(config, 3)] for _ in range(5)]
    b = [sample(logits, config, g).tolist() for g in [make_generators(config, 3)] for _ in range(5)]
    assert a == b
    # row 2 of a batch seeded 11 draws what a single row seeded 13 draws
    single = SamplingConfig(seed=13)
    gen = make_generators(single, 1)
    c = [sample(logits[2:3], single, gen).item() for _ in range(5)]
    assert [row[2] for row in a] == c
    assert len({tuple(row) for row in a}) > 1


def _sorted_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus threshold by a plain full sort, one row at a time."""
    out = []
    for row in probs:
        sorted_row = torch.sort(row, descending=True).values
        reached = (torch.cumsum(sorted_row, 0) >= top_p).nonzero()
        out.append(sorted_row[int(reached[0]) if len(reached) else -1])
    return torch.stack(out)[:, None]


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999, 0.99999])
def test_top_p_threshold_equals_a_full_sort(top_p):
    """Peaked rows (a few tokens hold the nucleus), flat rows (most of the vocabulary), rows of
    many tied values, a one-hot row with exact zeros, and a small vocabulary, in one batch each."""
    g = torch.Generator().manual_seed(0)
    for scale, V in [(4.0, 65536), (0.1, 65536), (1.0, 3000), (8.0, 50)]:
        logits = torch.randn(4, V, generator=g) * scale
        logits[1] = logits[1].round()  # many ties, all in one bin
        logits[2] = float("-inf")
        logits[2, 7] = 0.0  # all mass on one token, the rest exactly zero
        probs = torch.softmax(logits, dim=-1)
        assert torch.equal(top_p_threshold(probs, top_p), _sorted_threshold(probs, top_p)), (scale, V)


def test_top_p_threshold_on_a_uniform_row_keeps_what_a_sort_keeps():
    probs = torch.full((2, 1000), 1e-3)
    assert torch.equal(top_p_threshold(probs, 0.5), _sorted_threshold(probs, 0.5))


def test_draw_never_picks_a_token_of_zero_probability():
    probs = torch.zeros(4, 50)
    probs[:, 7] = 1.0
    probs[1, 49] = 0.0
    probs[2, 3] = 1e-30  # tiny but positive: allowed, almost never drawn
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    for _ in range(200):
        assert set(draw(probs, gens).tolist()) <= {7, 3}
    # a uniform number that rounds up to the total still lands on the last positive token
    edge = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    rng = torch.Generator().manual_seed(0)
    assert all(draw(edge, [rng]).item() in (0, 1) for _ in range(500))


def test_penalties_by_hand():
    """ChatRWKV: logits[t] -= presence + frequency * occurrence[t]; weights decay, digits add 0."""
    texts = {1: b"a", 2: b"7", 3: b" ", 4: b"b"}
    config = SamplingConfig(alpha_presence=0.5, alpha_frequency=0.25, alpha_decay=0.5)
    pen = Penalties(1, 6, config, penalty_weight(lambda ids: b"".join(texts.get(i, b"\xff") for i in ids)))
    for token in (1, 2, 1, 5):
        pen.update([token])
    # occurrence after a, 7, a, <0xff>: a = (1 * .5 + 0) * .5 + 1 then * .5 -> 0.625; 7 adds nothing;
    # token 5 decodes to U+FFFD (not exempt) -> 1
    expected_occurrence = torch.tensor([[0, 0.625, 0, 0, 0, 1.0]])
    assert torch.allclose(pen.occurrence, expected_occurrence)
    out = pen.apply(torch.zeros(1, 6))
    expected = -torch.tensor([[0, 0.5 + 0.25 * 0.625, 0.5, 0, 0, 0.5 + 0.25]])
    assert torch.allclose(out, expected)


def test_penalty_free_text_is_chatrwkvs():
    weight = penalty_weight(
        lambda ids: {1: b" ", 2: b"\t", 3: b"12", 4: b"x", 5: b"", 6: b" \t0", 7: b" 1"}[ids[0]]
    )
    assert [weight(t) for t in range(1, 8)] == [0, 0, 0, 1, 0, 0, 1]  # substrings of " \t0123456789" add 0


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(top_k=-2),
        dict(min_p=2),
        dict(alpha_decay=1.5),
    ],
    ids=str,
)
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(ConfigError):
        SamplingConfig(**bad)


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="top_q"):
        SamplingConfig.from_kwargs({"top_q": 0.5})


SAMPLE_SETTINGS = [
    *SETTINGS,
    dict(temperature=0.8, top_p=0.9, min_p=0.05),
    dict(temperature=1.0, top_p=1.0, top_k=5),
]


@pytest.mark.parametrize("rounds", [0, 2], ids=["threshold", "rejection"])
@pytest.mark.parametrize("settings", SAMPLE_SETTINGS, ids=str)
def test_sample_draws_from_the_filtered_distribution(settings, rounds, monkeypatch):
    """20,000 draws of one 40-token row (as 4,000 rows of their own seeds, 5 times): each token's
    frequency within 4.5 standard errors of ``filtered_probs`` (checked against the official
    pipeline above), and no token outside the filters; by rejection and by the threshold alone."""
    monkeypatch.setattr(sampling, "REJECTION_ROUNDS", rounds)
    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(1)) * 2
    config = SamplingConfig(**settings, seed=5)
    expected = filtered_probs(logits, config)[0].double()
    rows = 4000
    gens = make_generators(config, rows)
    draws = torch.cat([sample(logits.expand(rows, -1).clone(), config, gens) for _ in range(5)])
    n = draws.numel()
    freq = torch.bincount(draws, minlength=40).double() / n
    assert (freq[expected == 0] == 0).all()
    assert ((freq - expected).abs() <= 4.5 * (expected * (1 - expected) / n).sqrt() + 1e-12).all()


@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.9, 0.999])
def test_sample_stays_in_the_nucleus_of_a_large_vocabulary(top_p):
    """Flat and peaked 65k rows, many ties, one-hot: every drawn token reaches the threshold of a
    full sort, and the ones below it are never drawn."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 65536, generator=g) * torch.tensor([0.1, 0.5, 1, 2, 4, 8, 1, 1])[:, None]
    logits[6] = logits[6].round()
    logits[7] = float("-inf")
    logits[7, 11] = 0.0
    config = SamplingConfig(top_p=top_p, seed=0)
    probs = torch.softmax(logits, dim=-1)
    threshold = _sorted_threshold(probs, top_p)
    gens = make_generators(config, 8)
    for _ in range(40):
        tokens = sample(logits.clone(), config, gens)
        assert (probs.gather(1, tokens[:, None]) >= threshold).all()


def test_top_p_threshold_when_the_cut_falls_among_the_deepest_values():
    """One token holds all but ~1e-5 of the mass, the rest lie below 2^-32 of it, where the bins
    are lumped into one: a nucleus of 0.99999 reaches into them, and still keeps what a sort keeps."""
    g = torch.Generator().manual_seed(3)
    logits = -22.5 + 0.1 * torch.randn(2, 65536, generator=g)
    logits[:, 0] = 0.0
    logits[1, 1:100] = -3.0  # and a row whose cut stays above them
    probs = torch.softmax(logits, dim=-1)
    for top_p in (0.99999, 0.999995):
        assert _sorted_threshold(probs, top_p)[0] < probs[0, 0] * 2.0**-32  # the cut is that deep
        assert torch.equal(top_p_threshold(probs, top_p), _sorted_threshold(probs, top_p)), top_p
