"""Exact keys for short byte strings, and a vectorised hash table over them.

A string of ``n`` bytes with ``n < 8 * W`` packs into ``W`` little-endian ``uint64`` words: its bytes,
zero padded, and its length in the top byte of the last word (which therefore holds at most 7 of
the bytes). Packing is injective, so a key match is a byte-exact match: lookups need no second
check and cannot be fooled by collisions. The length byte is never zero, so a zero last word marks
an empty slot.

:class:`PackedTable` is an open-addressing (linear probing) table from such keys to ``int32``
values, with every operation done on whole numpy arrays of keys at once.
"""

from __future__ import annotations

import numpy as np

_TOP_SHIFT = np.uint64(56)
# MASK[k] keeps the low k bytes of a word (k = 0..8).
MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_TOP = np.array([n << 56 for n in range(8)], dtype=np.uint64)  # the length byte of one-word keys

# Odd 64-bit multipliers, one per key word: multiply-shift hashing keeps the top bits of the
# product, which depend on every bit of the word.
_MULTIPLIERS = [
    np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)
]


def max_length(words: int) -> int:
    """Longest string that packs into ``words`` words."""
    return 8 * words - 1


def words_at(buf: bytes, positions: np.ndarray) -> np.ndarray:
    """The 8 bytes of ``buf`` at each position, as little-endian uint64 ``[len(positions)]``.

    Every ``position + 8 <= len(buf)``; callers pad their buffers.
    """
    view = np.ndarray(shape=(len(buf) - 7,), dtype="V8", buffer=buf, strides=(1,))
    return view[positions].view("<u8")


def pack(buf: bytes, starts: np.ndarray, lengths: np.ndarray, words: int) -> list[np.ndarray]:
    """Keys of the strings ``buf[starts[i] : starts[i] + lengths[i]]``, all of ``1 <= length < 8 * words``.

    Returns ``words`` uint64 arrays ``[M]``. ``buf`` must extend ``8 * words`` bytes past every start.
    """
    if words == 1:
        key = words_at(buf, starts)
        key &= MASK[lengths]
        key |= _TOP[lengths]
        return [key]
    keys = []
    for j in range(words):
        word = words_at(buf, starts + 8 * j if j else starts)
        word &= MASK[np.clip(lengths - 8 * j, 0, 8)]
        keys.append(word)
    keys[-1] |= lengths.astype(np.uint64) << _TOP_SHIFT
    return keys


class PackedTable:
    """Linear-probing hash table from ``words``-word packed keys to int64 values (0: absent).

    ``2**bits`` slots; keep the load at most about a half so that probe runs stay short. A slot's
    key words and value sit side by side, so one lookup touches one place in memory; they are
    read in 16-byte pieces (as ``complex128``, numpy's fastest gather of that width).
    """

    def __init__(self, words: int, bits: int) -> None:
        self.words = words
        self.bits = bits
        self.size = 1 << bits
        self._mask = self.size - 1
        self._shift = np.uint64(64 - bits)
        width = words + 1 + (words + 1) % 2  # key words and the value, padded to 16-byte pieces
        self._pieces = width // 2
        self._records = np.zeros((self.size, width), np.uint64)
        self._flat = self._records.view(np.complex128).reshape(-1)
        self.keys = [self._records[:, j] for j in range(words)]
        self.values = self._records[:, words].view(np.int64)
        self.used = 0
        self.max_displacement = 0  # farthest any key sits from its home slot
        self.scratch = np.zeros(self.size, np.int64)  # free for callers between calls

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """The table as arrays: its records and ``[words, bits, used, max_displacement]``."""
        return self._records, np.array([self.words, self.bits, self.used, self.max_displacement])

    @classmethod
    def from_state(cls, records: np.ndarray, meta: np.ndarray) -> PackedTable:
        words, bits, used, max_displacement = (int(x) for x in meta)
        table = cls(words, bits)
        if records.shape != table._records.shape:
            raise ValueError("records do not fit the table")
        table._records[:] = records
        table.used, table.max_displacement = used, max_displacement
        return table

    def clear(self) -> None:
        self._records.fill(0)
        self.used = 0
        self.max_displacement = 0

    def _home(self, keys: list[np.ndarray]) -> np.ndarray:
        mixed = keys[0] * _MULTIPLIERS[0]
        for j in range(1, self.words):
            mixed ^= keys[j] * _MULTIPLIERS[j]
        return (mixed >> self._shift).view(np.int64)

    def _fetch(self, slots: np.ndarray) -> np.ndarray:
        """The records at ``slots``: uint64 ``[len(slots), width]`` (key words, value, padding)."""
        if self._pieces == 1:
            return self._flat[slots].view(np.uint64).reshape(-1, 2)
        first = slots * self._pieces
        out = np.empty((len(slots), self._pieces), np.complex128)
        for t in range(self._pieces):
            out[:, t] = self._flat[first + t]
        return out.view(np.uint64)

    def _matches(self, records: np.ndarray, keys: list[np.ndarray]) -> np.ndarray:
        # The last word first: it holds the length, so it rules out most wrong slots.
        hit = records[:, self.words - 1] == keys[-1]
        for j in range(self.words - 1):
            hit &= records[:, j] == keys[j]
        return hit

    def get(self, keys: list[np.ndarray]) -> np.ndarray:
        """Values of the keys (``words`` uint64 arrays ``[M]``): int64 ``[M]``, 0 where absent."""
        slots = self._home(keys)
        records = self._fetch(slots)
        hit = self._matches(records, keys)
        out = records[:, self.words].view(np.int64).copy()
        miss = np.flatnonzero(np.logical_not(hit, out=hit))
        if not miss.size:
            return out
        out[miss] = 0
        # A key away from home sits at most max_displacement slots further on, with no empty
        # slot in between (nothing is ever deleted, only everything at once).
        probing = miss[records[miss, self.words - 1] != 0]
        step = 0
        while probing.size and step < self.max_displacement:
            step += 1
            keys_p = [k[probing] for k in keys]
            if step > 2 and step < self.max_displacement:
                # The few keys left: compare the rest of their runs at once, rather than one slot
                # per round (each round costs a dozen array calls, whatever its size).
                offsets = np.arange(1, self.max_displacement - step + 2)  # from the slot looked at last
                window = (slots[probing][:, None] + offsets) & self._mask
                found = self.keys[-1][window] == keys_p[-1][:, None]
                for j in range(self.words - 1):
                    found &= self.keys[j][window] == keys_p[j][:, None]
                anywhere = found.any(axis=1)
                column = found.argmax(axis=1)[anywhere]
                out[probing[anywhere]] = self.values[window[anywhere, column]]
                break
            slots_p = (slots[probing] + 1) & self._mask
            slots[probing] = slots_p
            records = self._fetch(slots_p)
            found = self._matches(records, keys_p)
            out[probing[found]] = records[found, self.words].view(np.int64)
            probing = probing[~found & (records[:, self.words - 1] != 0)]
        return out

    def insert(self, keys: list[np.ndarray], limit: int | None = None, absent: bool = False) -> np.ndarray:
        """Find or add each key; return its slot (int64 ``[M]``). New slots get value 0.

        Equal keys in one call share a slot. Once ``used`` reaches ``limit`` (default: three
        quarters of the slots), keys not yet placed get slot -1. ``absent``: the caller has just
        found none of the keys in the table (saves looking).
        """
        limit = self.size * 3 // 4 if limit is None else min(limit, self.size * 3 // 4)
        home = self._home(keys)
        out = home.copy()
        everything = absent
        if absent:
            pending = np.arange(len(home))
        else:
            # Most keys of a warm cache are at home: settle those without the rounds below.
            pending = np.flatnonzero(~self._matches(self._fetch(home), keys))
            if not pending.size:
                return out
        slots = home.copy()
        claim = self.scratch
        while pending.size:
            # In the first round of an absent insert, pending is every key in order: no gathers.
            slots_p = slots.copy() if everything else slots[pending]
            records = self._fetch(slots_p)
            same = self._matches(records, keys if everything else [k[pending] for k in keys])
            everything = False
            out[pending[same]] = slots_p[same]
            empty = records[:, self.words - 1] == 0
            # Several keys may want one empty slot: each writes its index, one write survives,
            # and that key takes the slot; the others look at the (now used) slot again.
            wanting = pending[empty]
            wanted = slots_p[empty]
            claim[wanted] = wanting
            won = claim[wanted] == wanting
            winners, taken = wanting[won], wanted[won]
            full = self.used + len(taken) > limit
            if full:
                # Place what fits; every other key still pending gets -1.
                out[pending[~same]] = -1
                winners, taken = winners[: limit - self.used], taken[: limit - self.used]
            self.used += len(taken)
            for mine, given in zip(self.keys, keys, strict=True):
                mine[taken] = given[winners]
            out[winners] = taken
            if taken.size:
                moved = int(((taken - home[winners]) & self._mask).max())
                self.max_displacement = max(self.max_displacement, moved)
            if full:
                break
            moving = ~same & ~empty
            slots[pending[moving]] = (slots_p[moving] + 1) & self._mask
            pending = np.concatenate([pending[moving], wanting[~won]])
        return out
