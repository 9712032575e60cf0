"""Training samples: windows of ``ctx_len + 1`` tokens cut from a corpus's flat token stream.

As in RWKV-LM, a sample is any run of the stream (documents separated by token 0), so a window
may cross documents. Sample ``i`` of the run is a pure function of ``(seed, i)``: the run's only
data state is how many samples it has used, which makes resuming exact and lets any number of
processes share one stream (each takes its own slice of every global batch).

Within an epoch the windows tile the stream without overlap, visited in a seeded random order;
each epoch shifts the tiling by a seeded offset so that later epochs see other cuts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from eaglefinch.errors import DataError

PERMUTATION_LIMIT = 1 << 26  # above this many windows, an affine bijection replaces the stored permutation


class TokenWindows:
    """Sample windows from ``tokens`` (a 1-D array, typically a memory-mapped corpus).

    Args:
        tokens: the flat token stream.
        ctx_len: tokens per training input; a window holds ``ctx_len + 1`` (inputs and shifted targets).
        seed: the order of windows.
        val_tokens: hold out the last ``val_tokens`` tokens of the stream for evaluation.
    """

    def __init__(self, tokens: np.ndarray, ctx_len: int, seed: int = 0, val_tokens: int = 0):
        if ctx_len < 1:
            raise DataError(f"ctx_len must be positive, got {ctx_len}")
        if val_tokens < 0 or val_tokens >= len(tokens):
            raise DataError(
                f"cannot hold out {val_tokens} of the corpus's {len(tokens)} tokens for evaluation"
            )
        self.tokens = tokens
        self.ctx_len = ctx_len
        self.seed = seed
        self.train_end = len(tokens) - val_tokens
        self.val_tokens = val_tokens
        self.n_windows = (self.train_end - 1) // ctx_len
        if self.n_windows < 1:
            raise DataError(
                f"the corpus has {self.train_end} training tokens; "
                f"one sample needs ctx_len + 1 = {ctx_len + 1}"
            )
        self._slack = self.train_end - 1 - self.n_windows * ctx_len
        self._epoch = -1
        self._order: np.ndarray | tuple[int, int] = np.zeros(0, dtype=np.int64)
        self._shift = 0

    def _set_epoch(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        rng = np.random.default_rng([self.seed, epoch])
        self._shift = int(rng.integers(0, self._slack + 1))
        n = self.n_windows
        if n <= PERMUTATION_LIMIT:
            self._order = rng.permutation(n)
        else:  # j -> (a j + b) mod n, with a coprime to n, visits every window once
            a = int(rng.integers(1, n))
            while math.gcd(a, n) != 1:
                a += 1
            self._order = (a, int(rng.integers(0, n)))
        self._epoch = epoch

    def start_of(self, index: int) -> int:
        """Where sample ``index`` starts in the stream."""
        epoch, j = divmod(index, self.n_windows)
        self._set_epoch(epoch)
        if isinstance(self._order, tuple):
            a, b = self._order
            k = (a * j + b) % self.n_windows
        else:
            k = int(self._order[j])
        return self._shift + k * self.ctx_len

    def window(self, index: int) -> np.ndarray:
        start = self.start_of(index)
        return np.asarray(self.tokens[start : start + self.ctx_len + 1])

    def batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``first .. first + count - 1`` as (inputs, targets), LongTensors [count, ctx_len]."""
        windows = np.stack([self.window(first + i) for i in range(count)]).astype(np.int64)
        data = torch.from_numpy(windows)
        return data[:, :-1], data[:, 1:]

    def epoch_of(self, index: int) -> float:
        return index / self.n_windows

    def val_batches(self, batch_size: int, max_batches: int | None = None):
        """The held-out tail as consecutive windows, batched: yields (inputs, targets)."""
        tail = np.asarray(self.tokens[self.train_end :]).astype(np.int64)
        n = (len(tail) - 1) // self.ctx_len
        if n < 1:
            raise DataError(f"{len(tail)} held-out tokens cannot fill one window of {self.ctx_len + 1}")
        starts = [i * self.ctx_len for i in range(n)]
        batches = [starts[i : i + batch_size] for i in range(0, n, batch_size)]
        for group in batches[:max_batches]:
            data = torch.from_numpy(np.stack([tail[s : s + self.ctx_len + 1] for s in group]))
            yield data[:, :-1], data[:, 1:]
