"""Multi-query associative recall (MQAR) data, as HazyResearch's Zoology defines it.

An example holds N key-value pairs, then queries every key once::

    context (2N tokens)          query region (T - 2N + 1 slots, filler 0)
    k1 v1 k2 v2 ... kN vN   |    . . kσ1 . . . kσ2 . ...

Keys come from ``[1, V/2)``, values from ``[V/2, V)``, both distinct within an example. Key i is
queried at position ``2N + 2 * gap_i``, where the N gaps are drawn without replacement from
``{0, ..., (T - 2N)/2 - 1}`` with ``p(gap) ∝ (gap + 1)^(a - 1)`` (a power law, a = 0.01: most
queries come soon after the context, a few much later). The full sequence has T + 1 tokens;
the model reads ``seq[:-1]`` and is scored on ``seq[1:]`` only where the next token is the value
of a queried key; every other label is ``IGNORE`` (-100).

Worked example (T = 12, N = 2, keys (3, 7), values (4100, 5000), gaps (1, 0))::

    seq    = 3 4100 7 5000 | 7 0 3 0 0 0 0 0 0
    inputs = 3 4100 7 5000   7    0 3    0 0 0 0 0
    labels = .    .  .    .  5000 . 4100 . . . . .      (. = -100)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eaglefinch.errors import ConfigError

IGNORE = -100  # label of every position that is not scored (torch's cross-entropy ignore_index)
VOCAB_SIZE = 8192
POWER_A = 0.01
_ROWS_PER_BATCH = 2048  # rows sampled at once: bounds the (rows, V/2) scratch array to ~32 MB


@dataclass(frozen=True)
class MQARData:
    """``inputs``, ``labels``: (examples, T) int64; ``labels`` is ``IGNORE`` except at the N query slots."""

    inputs: torch.Tensor
    labels: torch.Tensor


def check_sizes(seq_len: int, num_kv_pairs: int, vocab_size: int = VOCAB_SIZE) -> None:
    """Raise ConfigError unless T is even, 4N <= T < V, and V/2 leaves room for N distinct keys."""
    if num_kv_pairs < 1:
        raise ConfigError(f"MQAR needs at least one key-value pair, got N={num_kv_pairs}")
    if seq_len % 2:
        raise ConfigError(f"MQAR sequence length must be even, got T={seq_len}")
    if 4 * num_kv_pairs > seq_len:
        raise ConfigError(
            f"MQAR needs 4N <= T (room for the context and N queries), got T={seq_len}, N={num_kv_pairs}"
        )
    if seq_len >= vocab_size:
        raise ConfigError(f"MQAR needs T < vocabulary size, got T={seq_len}, V={vocab_size}")
    if num_kv_pairs >= vocab_size // 2:
        raise ConfigError(f"vocabulary {vocab_size} is too small for {num_kv_pairs} distinct keys")


def gap_probabilities(num_slots: int, power_a: float = POWER_A) -> np.ndarray:
    """p(gap) for gap in 0..num_slots-1: proportional to (gap + 1)^(a - 1)."""
    p = np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1.0)
    return p / p.sum()


def _sample_without_replacement(
    rng: np.random.Generator, rows: int, population: int, size: int, log_p: np.ndarray | None = None
) -> np.ndarray:
    """(rows, size) indices into range(population), distinct within each row.

    Gumbel top-k: adding Gumbel noise to log-probabilities and keeping the ``size`` largest is the
    same distribution as drawing one at a time without replacement (uniform when ``log_p`` is None).
    """
    out = np.empty((rows, size), dtype=np.int64)
    for start in range(0, rows, _ROWS_PER_BATCH):
        n = min(_ROWS_PER_BATCH, rows - start)
        scores = rng.gumbel(size=(n, population))
        if log_p is not None:
            scores += log_p
        top = np.argpartition(-scores, size - 1, axis=1)[:, :size]
        # order the chosen ones by score so the draw order matches sequential sampling
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + n] = np.take_along_axis(top, order, axis=1)
    return out


def layout(
    keys: np.ndarray, values: np.ndarray, gaps: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Examples from keys, values and gaps, each (examples, N); returns (inputs, labels), (examples, T)."""
    n_examples, n_pairs = keys.shape
    context = 2 * n_pairs
    seq = np.zeros((n_examples, seq_len + 1), dtype=np.int64)
    seq[:, 0:context:2] = keys
    seq[:, 1:context:2] = values
    rows = np.arange(n_examples)[:, None]
    query_pos = context + 2 * gaps  # (examples, N): where key i is asked again
    seq[rows, query_pos] = keys
    full_labels = np.full((n_examples, seq_len + 1), IGNORE, dtype=np.int64)
    full_labels[rows, query_pos + 1] = values  # the token after the query is its value
    return seq[:, :-1], full_labels[:, 1:]


def generate(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    seed: int,
    vocab_size: int = VOCAB_SIZE,
    power_a: float = POWER_A,
) -> MQARData:
    """``num_examples`` examples of length ``seq_len`` with ``num_kv_pairs`` pairs; same seed, same data."""
    check_sizes(seq_len, num_kv_pairs, vocab_size)
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    keys = 1 + _sample_without_replacement(rng, num_examples, half - 1, num_kv_pairs)  # from [1, V/2)
    values = half + _sample_without_replacement(
        rng, num_examples, vocab_size - half, num_kv_pairs
    )  # [V/2, V)
    num_slots = (seq_len - 2 * num_kv_pairs) // 2
    log_p = np.log(gap_probabilities(num_slots, power_a))
    gaps = _sample_without_replacement(rng, num_examples, num_slots, num_kv_pairs, log_p)
    inputs, labels = layout(keys, values, gaps, seq_len)
    return MQARData(torch.from_numpy(inputs), torch.from_numpy(labels))
