"""Per-position loss on long documents with the state carried, and log-spaced binning."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eaglefinch.experiments.long_context.models import is_recurrent

HEAD_ROWS = 2048  # positions per head matmul: keeps (rows x V) logits small on long documents


@torch.no_grad()
def position_losses(model: nn.Module, doc: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Next-token losses of one document read from its first token.

    Args:
        doc: (T,) token ids.
        chunk: tokens per forward call, the state carried between calls; ``None`` (and always for a
            model without state) reads the whole document in one call.

    Returns:
        (T - 1,) float32: entry p is the loss of predicting ``doc[p + 1]`` from ``doc[: p + 1]``.
    """
    x, y = doc[:-1].unsqueeze(0), doc[1:]
    n = x.shape[1]
    step = n if chunk is None or not is_recurrent(model) else chunk
    state = None
    out = []
    for s in range(0, n, step):
        hidden, state = model.forward_hidden(x[:, s : s + step], state)
        hidden = hidden[0]
        for h in range(0, hidden.shape[0], HEAD_ROWS):
            logits = model.head(hidden[h : h + HEAD_ROWS]).float()
            out.append(F.cross_entropy(logits, y[s + h : s + h + logits.shape[0]], reduction="none"))
    return torch.cat(out)


def average_over_documents(losses: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss at each position over the documents that reach it, and how many do.

    Returns ``(mean, count)``, each of length ``max(len)``.
    """
    n = max(len(x) for x in losses)
    total = np.zeros(n)
    count = np.zeros(n, dtype=np.int64)
    for x in losses:
        total[: len(x)] += x
        count[: len(x)] += 1
    return total / count, count


def log_bin_edges(n: int, n_bins: int) -> np.ndarray:
    """Edges of log-spaced bins over positions 1..n: ``floor(logspace(0, log10(n + 1), n_bins + 1))``.

    Duplicate edges (several at the small end) are merged, so there may be fewer bins; bin i
    covers positions ``[edges[i], edges[i + 1])``. Example: n = 9, 2 bins -> edges 1, 3, 10.
    """
    edges = np.floor(np.logspace(0, np.log10(n + 1), n_bins + 1) + 1e-9).astype(np.int64)
    edges[0], edges[-1] = 1, n + 1
    return np.unique(edges)


def bin_means(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth a per-position curve: ``values[p - 1]`` belongs to position p (1-based).

    Returns ``(centres, means)``: each bin's geometric-mean position ``sqrt(first * last)`` and the
    plain mean of the values in it.
    """
    edges = log_bin_edges(len(values), n_bins)
    centres, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        centres.append(float(np.sqrt(lo * (hi - 1))))
        means.append(float(np.mean(values[lo - 1 : hi - 1])))
    return np.array(centres), np.array(means)
