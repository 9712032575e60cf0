"""A cache of states after token prefixes, so repeated prompts skip the work already done.

An RWKV state after a prefix is all the model needs to continue it, and it has a fixed size
(66 * C * L numbers, about 2.4 MB for L12-D768 in float32), so caching states costs no more for
long prompts than for short ones. ``prefill`` stores a state every ``stride`` tokens and at the
end of each prompt; a later prompt resumes from the longest stored prefix of its tokens.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eaglefinch.errors import ConfigError, StateError
from eaglefinch.model.state import RWKVState


@dataclass
class CacheHit:
    length: int  # how many leading tokens the state covers
    state: RWKVState  # one row; do not modify (prefill never does: the model's forward is functional)
    logits: torch.Tensor  # (1, V) float32 after those tokens


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0  # prompt tokens not recomputed thanks to the cache


class PrefixCache:
    """Least-recently-used states keyed by the exact token prefix they follow; one model per cache.

    Args:
        max_bytes: evict the least recently used entries beyond this many bytes of states and logits.
        stride: also store a state every ``stride`` tokens of a prompt (a shared system prompt or
            document then serves prompts that only share a prefix).
    """

    def __init__(self, max_bytes: int = 512 * 2**20, stride: int = 256):
        if stride <= 0 or max_bytes <= 0:
            raise ConfigError(f"PrefixCache needs stride > 0 and max_bytes > 0, got {stride} and {max_bytes}")
        self.max_bytes = max_bytes
        self.stride = stride
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[int, ...], tuple[RWKVState, torch.Tensor, int]] = OrderedDict()
        self._lengths: dict[int, int] = {}  # prefix length -> number of entries of that length
        self._bytes = 0
        self._model = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _bind(self, model) -> None:
        """A cache serves one model: states of another model would silently give wrong text."""
        bound = self._model() if self._model is not None else None
        if bound is None:
            self._model = weakref.ref(model)
            self.clear()
        elif bound is not model:
            raise StateError("this PrefixCache holds states of another model; use one cache per model")

    def clear(self) -> None:
        self._entries.clear()
        self._lengths.clear()
        self._bytes = 0

    def lookup(self, model, tokens: Sequence[int]) -> CacheHit | None:
        """The longest cached prefix of ``tokens`` (possibly all of them), or None."""
        self._bind(model)
        tokens = tuple(tokens)
        for length in sorted((n for n in self._lengths if n <= len(tokens)), reverse=True):
            key = tokens[:length]
            if key in self._entries:
                self._entries.move_to_end(key)
                state, logits, _ = self._entries[key]
                self.stats.hits += 1
                self.stats.tokens_reused += length
                return CacheHit(length, state, logits)
        self.stats.misses += 1
        return None

    def insert(self, model, tokens: Sequence[int], state: RWKVState, logits: torch.Tensor) -> None:
        """Store the one-row ``state`` and ``logits`` (1, V) that follow ``tokens`` (copies are kept)."""
        self._bind(model)
        if state.batch_size != 1:
            raise StateError(f"the prefix cache stores one-row states, got {state.batch_size} rows")
        key = tuple(int(t) for t in tokens)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        state, logits = state.clone(), logits.detach().clone()
        size = sum(t.numel() * t.element_size() for t in state.tensors().values()) + logits.numel() * 4
        if size > self.max_bytes:
            return
        self._entries[key] = (state, logits, size)
        self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
        self._bytes += size
        while self._bytes > self.max_bytes:
            old, (_, _, old_size) = self._entries.popitem(last=False)
            self._bytes -= old_size
            self._lengths[len(old)] -= 1
            if not self._lengths[len(old)]:
                del self._lengths[len(old)]
