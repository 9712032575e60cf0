"""The MQAR generator against hand-worked examples and the Zoology definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eaglefinch.errors import ConfigError
from eaglefinch.experiments.mqar.data import IGNORE, gap_probabilities, generate, layout

_ = IGNORE


def test_layout_hand_worked_example():
    """T = 12, N = 2, keys (3, 7), values (4100, 5000), gaps (1, 0): the module docstring's example."""
    inputs, labels = layout(np.array([[3, 7]]), np.array([[4100, 5000]]), np.array([[1, 0]]), seq_len=12)
    # full sequence: 3 4100 7 5000 | 7 0 3 0 0 0 0 0 0 (key 7 at gap 0, key 3 at gap 1)
    assert inputs.tolist() == [[3, 4100, 7, 5000, 7, 0, 3, 0, 0, 0, 0, 0]]
    assert labels.tolist() == [[_, _, _, _, 5000, _, 4100, _, _, _, _, _]]


def test_layout_last_slot():
    """T = 8, N = 1: gaps 0..2; the last gap puts the query at position 6 and its label at 6 too."""
    inputs, labels = layout(np.array([[5]]), np.array([[9]]), np.array([[2]]), seq_len=8)
    assert inputs.tolist() == [[5, 9, 0, 0, 0, 0, 5, 0]]
    assert labels.tolist() == [[_, _, _, _, _, _, 9, _]]


@pytest.mark.parametrize("T,N", [(16, 2), (64, 4), (128, 8), (64, 16)])
def test_generated_examples_follow_the_definition(T, N):
    V = 8192
    data = generate(300, T, N, seed=5)
    inputs, labels = data.inputs.numpy(), data.labels.numpy()
    assert inputs.shape == labels.shape == (300, T) and inputs.dtype == np.int64
    for x, y in zip(inputs, labels, strict=True):
        keys, values = x[0 : 2 * N : 2], x[1 : 2 * N : 2]
        assert len(set(keys)) == N and ((keys >= 1) & (keys < V // 2)).all()
        assert len(set(values)) == N and ((values >= V // 2) & (values < V)).all()
        query = x[2 * N :]
        pos = np.flatnonzero(query)  # every non-filler slot of the query region holds a key
        assert sorted(query[pos]) == sorted(keys) and (pos % 2 == 0).all()
        assert len(pos) == N
        # labelled exactly at the query positions, with the value paired to that key in the context
        scored = np.flatnonzero(y != IGNORE)
        assert (scored == 2 * N + pos).all()
        pairs = dict(zip(keys, values, strict=True))
        assert [pairs[k] for k in x[scored]] == list(y[scored])


def test_seeded_and_deterministic():
    a, b, c = generate(50, 64, 4, seed=1), generate(50, 64, 4, seed=1), generate(50, 64, 4, seed=2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_gap_distribution_is_the_power_law():
    """With N = 1 the query gap is one draw from p(g) ∝ (g + 1)^(a - 1), a = 0.01."""
    T, n = 16, 20_000  # (16 - 2) / 2 = 7 slots
    data = generate(n, T, 1, seed=7, vocab_size=64)  # the gaps do not depend on the vocabulary
    gaps = (data.labels != IGNORE).nonzero()[:, 1].numpy() // 2 - 1
    freq = np.bincount(gaps, minlength=7) / n
    slots = np.arange(1, 8)
    expected = slots**-0.99 / (slots**-0.99).sum()
    assert np.allclose(gap_probabilities(7), expected)
    assert np.abs(freq - expected).max() < 0.015  # ~3 standard errors at n = 20,000


def test_gaps_without_replacement_favour_early_slots():
    """Each slot is used at most once per example, and with N = 4 of 28 slots, slot 0 is used most."""
    data = generate(2000, 64, 4, seed=8)
    rows, cols = (data.labels != IGNORE).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=2000)
    assert (counts == 4).all()  # four distinct slots in each example
    use = torch.bincount((cols - 8) // 2, minlength=28).float() / 2000
    assert use[0] > use[1] > use[5] > use[27]


@pytest.mark.parametrize("T,N", [(15, 2), (12, 4), (8192, 4), (16, 0)])
def test_bad_sizes_raise_one_line(T, N):
    with pytest.raises(ConfigError):
        generate(4, T, N, seed=0)
