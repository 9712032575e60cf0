"""Training samples: windows of ``ctx_len + 1`` tokens cut from a corpus's flat token stream.

As in RWKV-LM, a sample is any run of the stream (documents separated by token 0), so a window
may cross documents. The stream is tiled into slots of ``ctx_len`` tokens (a window is a slot
plus the next token, its last target). Sample ``i`` of a run is a pure function of ``(seed, i)``:
the run's only data state is how many samples it has used, which makes resuming exact and lets any
number of processes share one stream (each takes its own slice of every global batch).

Held-out windows are a seeded random choice of slots, spread over the whole stream so that they
follow the mixture, and never trained on. Each epoch visits every other slot once, in a fresh
seeded order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from eaglefinch.errors import DataError

# Above this many slots the orders are affine bijections instead of stored permutations, and the
# held-out slots are the last ones (a stored list of the training slots would not fit).
PERMUTATION_LIMIT = 1 << 26


class TokenWindows:
    """Sample windows from ``tokens`` (a 1-D array, typically a memory-mapped corpus).

    Args:
        tokens: the flat token stream.
        ctx_len: tokens per training input; a window holds ``ctx_len + 1`` (inputs and shifted targets).
        seed: the choice of held-out slots and the order of the training ones.
        val_tokens: hold out about this many tokens (whole slots) for evaluation.
    """

    def __init__(self, tokens: np.ndarray, ctx_len: int, seed: int = 0, val_tokens: int = 0):
        if ctx_len < 1:
            raise DataError(f"ctx_len must be positive, got {ctx_len}")
        if val_tokens < 0:
            raise DataError(f"val_tokens must be >= 0, got {val_tokens}")
        self.tokens = tokens
        self.ctx_len = ctx_len
        self.seed = seed
        n_slots = (len(tokens) - 1) // ctx_len
        n_val = math.ceil(val_tokens / ctx_len)
        if n_slots - n_val < 1:
            raise DataError(
                f"the corpus has {len(tokens)} tokens: too few for one training window of ctx_len + 1 = "
                f"{ctx_len + 1}" + (f" besides {val_tokens} held-out tokens" if val_tokens else "")
            )
        self.n_slots = n_slots
        self.n_windows = n_slots - n_val
        self._train_slots: np.ndarray | None = None  # None: slots 0 .. n_windows - 1
        if n_val and n_slots <= PERMUTATION_LIMIT:
            val = np.random.default_rng([seed, 1 << 30]).choice(n_slots, size=n_val, replace=False)
            self.val_slots = np.sort(val)
            self._train_slots = np.setdiff1d(np.arange(n_slots), self.val_slots)
        else:
            self.val_slots = np.arange(self.n_windows, n_slots)
        self._epoch = -1
        self._order: np.ndarray | tuple[int, int] = np.zeros(0, dtype=np.int64)

    def _set_epoch(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        rng = np.random.default_rng([self.seed, epoch])
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
        slot = k if self._train_slots is None else int(self._train_slots[k])
        return slot * self.ctx_len

    def window(self, index: int) -> np.ndarray:
        start = self.start_of(index)
        return np.asarray(self.tokens[start : start + self.ctx_len + 1])

    def tokens_before(self, index: int) -> int:
        """Input tokens in samples ``0 .. index - 1`` (every window holds ``ctx_len``)."""
        return index * self.ctx_len

    def batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``first .. first + count - 1`` as (inputs, targets), LongTensors [count, ctx_len]."""
        windows = np.stack([self.window(first + i) for i in range(count)]).astype(np.int64)
        data = torch.from_numpy(windows)
        return data[:, :-1], data[:, 1:]

    def epoch_of(self, index: int) -> float:
        return index / self.n_windows

    def val_batches(self, batch_size: int, max_batches: int | None = None):
        """The held-out windows in stream order, batched: yields (inputs, targets)."""
        if not len(self.val_slots):
            raise DataError("no held-out data: set val_tokens")
        starts = [int(s) * self.ctx_len for s in self.val_slots]
        groups = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
        for group in groups[:max_batches]:
            stack = np.stack([np.asarray(self.tokens[s : s + self.ctx_len + 1]) for s in group])
            data = torch.from_numpy(stack.astype(np.int64))
            yield data[:, :-1], data[:, 1:]
