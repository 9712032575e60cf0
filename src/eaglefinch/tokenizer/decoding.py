"""Ids back to bytes: one gather from the vocabulary's bytes laid end to end."""

from __future__ import annotations

import array
from collections.abc import Iterable
from typing import Literal

import numpy as np

from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer.vocab import END_OF_TEXT, Vocabulary

Errors = Literal["strict", "replace"]
REPLACEMENT = "\ufffd".encode()  # stands in for an unknown id with errors="replace"


def as_id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Ids as int64 ``[T]``; raises :class:`TokenizerError` for anything but a flat run of integers."""
    if isinstance(ids, np.ndarray):
        if ids.size and (ids.ndim != 1 or ids.dtype.kind not in "iu"):
            raise TokenizerError(_not_ids(None, ids))
        if ids.dtype == np.uint64 and ids.size and int(ids.max()) >= 2**63:
            first = int(np.flatnonzero(ids >= 2**63)[0])
            raise TokenizerError(f"id {int(ids[first])} at position {first} is not in the vocabulary")
        return ids.astype(np.int64, copy=False).reshape(-1)
    values = ids if isinstance(ids, (list, tuple)) else list(ids)
    try:
        # array.array takes ints (and numpy integers) only: floats and strings raise, as they
        # should, where numpy would quietly convert them.
        return np.frombuffer(array.array("q", values), np.int64)
    except (TypeError, OverflowError):
        raise TokenizerError(_not_ids(values, None)) from None


def _not_ids(values: Iterable | None, given: np.ndarray | None) -> str:
    if values is not None:
        for position, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                return f"id at position {position} is {value!r}, not an integer"
            if not -(2**63) <= value < 2**63:
                return f"id {value} at position {position} is not in the vocabulary"
    if given is not None:
        return f"ids must be a flat sequence of integers, got {given.dtype} with shape {given.shape}"
    return "ids must be a flat sequence of integers"


class Decoder:
    """Maps ids to their bytes. Id 0 (end of text) decodes to nothing."""

    def __init__(self, vocab: Vocabulary) -> None:
        n_ids = len(vocab.by_id)
        self._by_id = vocab.by_id
        # int32 halves the memory the gathers move; the blob is far below 2 GB.
        self._lengths = np.zeros(n_ids, np.int32)
        self._lengths[vocab.ids] = vocab.lengths
        self._offsets = np.zeros(n_ids, np.int32)
        self._offsets[vocab.ids] = np.cumsum(vocab.lengths) - vocab.lengths
        self._known = np.zeros(n_ids, bool)
        self._known[vocab.ids] = True
        self._known[END_OF_TEXT] = True
        # Unknown ids (errors="replace") read the replacement character, kept after the tokens.
        self._replacement_offset = len(vocab.blob)
        self._blob = np.frombuffer(vocab.blob + REPLACEMENT, np.uint8)

    def decode_small(self, ids: list[int] | tuple[int, ...]) -> bytes | None:
        """:meth:`decode` of a few plain ints without numpy; None if any id is not a known int
        (the caller then takes the general path, which reports it)."""
        by_id, n = self._by_id, len(self._by_id)
        pieces = []
        for i in ids:
            if type(i) is not int or not 0 <= i < n:
                return None
            piece = by_id[i]
            if piece is None:
                return None
            pieces.append(piece)
        return b"".join(pieces)

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        """Bytes of each id (all known): int64, same shape."""
        return self._lengths[ids]

    def unknown(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ids outside the vocabulary: int64 ``[K]``."""
        outside = (ids < 0) | (ids >= len(self._known))
        inside = ~outside
        outside[inside] = ~self._known[ids[inside]]
        return np.flatnonzero(outside)

    def decode(self, ids: np.ndarray, errors: Errors = "strict") -> bytes:
        """Concatenated bytes of ``ids`` (int64 ``[T]``)."""
        if ids.size == 0:
            return b""
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= len(self._known) or not self._known[ids].all():
            bad = self.unknown(ids)
            if errors == "strict":
                first = int(bad[0])
                raise TokenizerError(
                    f"id {int(ids[first])} at position {first} is not in the vocabulary "
                    f"(the vocabulary has ids 0..{len(self._known) - 1}, not all of them defined)"
                )
            if errors != "replace":
                raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
            return self._decode_replacing(ids, bad)
        return self._gather(self._lengths[ids], self._offsets[ids])

    def _gather(self, lengths: np.ndarray, offsets: np.ndarray) -> bytes:
        """Concatenate ``blob[offsets[t] : offsets[t] + lengths[t]]`` over t (int32 ``[T]`` each)."""
        if not lengths.all():  # empty pieces (end of text) would collide with the next start
            keep = lengths != 0
            lengths, offsets = lengths[keep], offsets[keep]
        if not lengths.size:
            return b""
        ends = np.cumsum(lengths, dtype=np.int64)
        # The index into blob of output byte j rises by one within a token and jumps at each
        # token start: write the jumps over ones and take the running sum.
        step = np.ones(int(ends[-1]), np.int32)
        jump = np.empty_like(offsets)
        jump[0] = offsets[0]
        np.subtract(offsets[1:], offsets[:-1] + lengths[:-1] - 1, out=jump[1:])
        step[ends - lengths] = jump
        np.cumsum(step, dtype=np.int32, out=step)
        return self._blob[step].tobytes()

    def _decode_replacing(self, ids: np.ndarray, bad: np.ndarray) -> bytes:
        safe = ids.copy()
        safe[bad] = END_OF_TEXT
        lengths = self._lengths[safe]
        offsets = self._offsets[safe]
        lengths[bad] = len(REPLACEMENT)
        offsets[bad] = self._replacement_offset
        return self._gather(lengths, offsets)
