"""Greedy longest-match encoding over UTF-8 bytes, vectorised with numpy.

The World tokenizer reads left to right and at each position takes the longest vocabulary entry
that matches there. Done one token at a time in Python that is slow, so this module does the work
in whole-array steps, without changing the result:

1. **Cuts.** Between bytes ``a`` and ``b`` no token can span if the pair ``ab`` occurs inside no
   vocabulary entry. The greedy encoding therefore has a token boundary at every such *cut*, and
   goes on from there exactly as it would from the start of a text. So the text is split at its
   cuts into *chunks* that encode independently, and the encoding is the concatenation of theirs.
   In English and code most chunks (a word with its leading space, an operator) are one token.
2. **Chunk lookup.** Chunks of up to 31 bytes are packed into exact keys (:mod:`.table`) and looked
   up all at once in hash tables that hold the tokens and a cache of multi-token chunks.
3. **Cold chunks.** The chunks left over are encoded, each distinct one once, by walking the
   vocabulary trie (:mod:`.trie`) from all of their token starts at once; their encodings go into
   the cache, which is cleared when full.

Input is processed in blocks of about :data:`BLOCK_BYTES`, each ending at a cut, which bounds the
memory of a call. The result is always that of the plain greedy loop
(``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``), which the tests check.
"""

from __future__ import annotations

import threading

import numpy as np

from eaglefinch.tokenizer.table import PackedTable, max_length, pack
from eaglefinch.tokenizer.trie import ByteTrie
from eaglefinch.tokenizer.vocab import Vocabulary

BLOCK_BYTES = 1 << 20
SMALL_BYTES = 2048

# Chunk tables by key size: (words per key, smallest chunk length, largest chunk length).
_CLASSES = (
    (1, 1, max_length(1)),
    (2, max_length(1) + 1, max_length(2)),
    (4, max_length(2) + 1, max_length(4)),
)
_CACHE_BITS = (18, 16, 14)  # cache table sizes per class; cleared when half full
_KEYED_MAX = max_length(4)  # longer chunks are looked up in a dict
_LONG_CACHE_MAX = 1 << 15  # cached chunks over _KEYED_MAX bytes
_LONG_CACHE_MAX_BYTES = 256  # longer cold chunks are not kept

_TOKEN_ROUNDS = 6  # tokens found for all cold chunks together before the rest switch method
_MAX_WALK_ROUNDS = 24  # parallel walk steps before the few chunks left are walked in Python

# Values in the chunk tables (int64): a token id (> 0), or minus the segment of a cached
# multi-token chunk (< 0), or 0 for absent.


class _Segments:
    """Token sequences by index: ``pool[offsets[s] : offsets[s] + counts[s]]`` is segment ``s``.

    Segment ``i`` for a token id ``i`` is that one token, so ``abs(value)`` of a chunk-table value
    is always a segment. Later segments are cached encodings of multi-token chunks.
    """

    def __init__(self, n_ids: int) -> None:
        self.n_static = n_ids
        self.offsets = np.arange(n_ids, dtype=np.int64)
        self.counts = np.ones(n_ids, np.int64)
        self.pool = np.arange(n_ids, dtype=np.int32)
        self.n = n_ids
        self.pool_used = n_ids

    def clear(self) -> None:
        self.n = self.n_static
        self.pool_used = self.n_static

    def add(self, tokens: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Append segments (their tokens back to back); return their indices, int64 ``[len(counts)]``."""
        first, n_new = self.n, len(counts)
        self.offsets = _fit(self.offsets, first + n_new)
        self.counts = _fit(self.counts, first + n_new)
        self.pool = _fit(self.pool, self.pool_used + len(tokens))
        self.counts[first : first + n_new] = counts
        self.offsets[first : first + n_new] = self.pool_used + np.cumsum(counts) - counts
        self.pool[self.pool_used : self.pool_used + len(tokens)] = tokens
        self.n += n_new
        self.pool_used += len(tokens)
        return np.arange(first, first + n_new, dtype=np.int64)

    def expand(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens of chunks with these chunk-table values (ids, or minus segments), in order
        (int32 ``[T]``), and each chunk's token count (int64 ``[M]``)."""
        multi = np.flatnonzero(values < 0)
        counts = np.ones(len(values), np.int64)
        c = self.counts[-values[multi]]
        counts[multi] = c
        # Repeat each chunk's value count times: right for one-token chunks, whose value is the
        # id; the runs of multi-token chunks are then overwritten with their tokens.
        tokens = np.repeat(values.astype(np.int32), counts)
        if multi.size:
            first = (np.cumsum(counts) - counts)[multi]  # where each multi-token chunk's run starts
            within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
            tokens[np.repeat(first, c) + within] = self.pool[
                np.repeat(self.offsets[-values[multi]], c) + within
            ]
        return tokens, counts


def _fit(array: np.ndarray, size: int) -> np.ndarray:
    if size <= len(array):
        return array
    grown = np.empty(max(size, 2 * len(array)), array.dtype)
    grown[: len(array)] = array
    return grown


def _bits_for(entries: int) -> int:
    """Table bits that keep ``entries`` at most half the slots."""
    return max(10, int(2 * entries - 1).bit_length())


class GreedyEncoder:
    """Greedy longest-match encoder for one vocabulary; safe to share between threads.

    :meth:`encode` maps any bytes to int32 ids. Memory: about 30 MB of tables for the bundled
    vocabulary, and a cache of chunk encodings (tens of MB at most) that is cleared when full.
    """

    _SEGMENTS_MAX = 1 << 21
    _POOL_MAX = 1 << 22

    def __init__(self, vocab: Vocabulary, built: dict[str, np.ndarray] | None = None) -> None:
        """``built``: the arrays of :meth:`built_arrays` of an encoder of the same vocabulary, to
        skip building them (see :mod:`.cache`)."""
        by_id = vocab.by_id
        ids, pieces, lengths, blob = vocab.ids, vocab.pieces, vocab.lengths, vocab.blob
        self.max_token_bytes = int(lengths.max())
        # Zero bytes after a block, so that every chunk start can read a whole key and trie walks
        # (at most max_token_bytes deep) can run past the end.
        self._pad = b"\0" * max(8 * _CLASSES[-1][0], self.max_token_bytes)
        self._block_bytes = max(BLOCK_BYTES, 2 * self.max_token_bytes)
        # Inputs up to this size are encoded one byte at a time in plain Python: below it that
        # beats the fixed cost of a few hundred array calls.
        self.small_bytes = SMALL_BYTES
        self._lengths_by_id = np.zeros(len(by_id), np.int64)
        self._lengths_by_id[ids] = lengths
        if built is not None:
            self._cut = np.asarray(built["cut"], dtype=bool)
            self._trie = ByteTrie.from_arrays({k[5:]: v for k, v in built.items() if k.startswith("trie_")})
            self._tokens = [
                PackedTable.from_state(built[f"tokens{c}_records"], built[f"tokens{c}_meta"])
                for c in range(len(_CLASSES))
            ]
        else:
            self._build(ids, pieces, lengths, blob)
        self._cache = [
            PackedTable(words, bits) for (words, _, _), bits in zip(_CLASSES, _CACHE_BITS, strict=True)
        ]
        self._long_tokens = {pieces[k]: int(ids[k]) for k in np.flatnonzero(lengths > _KEYED_MAX).tolist()}
        self._long_cache: dict[bytes, int] = {}  # cached encodings of chunks over _KEYED_MAX bytes
        self._segments = _Segments(len(by_id))
        self._lock = threading.Lock()

    def _build(self, ids: np.ndarray, pieces: list[bytes], lengths: np.ndarray, blob: bytes) -> None:
        """The cut table, the trie and the token tables, from the vocabulary."""
        starts = np.cumsum(lengths) - lengths
        # Cut table, by pair code a << 8 | b: True where no entry contains the pair ab.
        blob_u8 = np.frombuffer(blob, np.uint8)
        inside = np.ones(len(blob) - 1, bool)
        inside[(starts + lengths - 1)[:-1]] = False  # pairs that straddle two entries
        pair_codes = (blob_u8[:-1].astype(np.int64) << 8) | blob_u8[1:]
        self._cut = np.ones(1 << 16, bool)
        self._cut[pair_codes[inside]] = False

        self._trie = ByteTrie(pieces, ids, lengths, blob)

        # Token tables, one per key size (the cache of multi-token chunks has its own). They are
        # a quarter full (short probe runs) and still small: gathers from a table that fits in
        # the CPU cache are several times faster.
        self._tokens = []
        padded = blob + self._pad
        for words, low, high in _CLASSES:
            rows = np.flatnonzero((lengths >= low) & (lengths <= high))
            table = PackedTable(words, _bits_for(len(rows)) + 1)
            slots = table.insert(pack(padded, starts[rows], lengths[rows], words))
            table.values[slots] = ids[rows]
            self._tokens.append(table)

    def built_arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`_build` makes, as named arrays (the ``built`` argument of the constructor)."""
        out = {"cut": self._cut}
        out.update({f"trie_{name}": array for name, array in self._trie.arrays().items()})
        for c, table in enumerate(self._tokens):
            out[f"tokens{c}_records"], out[f"tokens{c}_meta"] = table.state()
        return out

    # ------------------------------------------------------------------ public

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids of ``data``: int32 ``[T]``."""
        if len(data) <= self.small_bytes:
            return np.array(self._trie.encode_small(data), np.int32)
        parts = []
        start, n = 0, len(data)
        while start < n:
            # A block holds more than one token, so a block that is not the last makes progress.
            stop = min(n, start + self._block_bytes)
            ids, used = self._encode_block(data[start:stop], final=stop == n)
            parts.append(ids)
            start += used
        if not parts:
            return np.zeros(0, np.int32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def encode_list(self, data: bytes) -> list[int]:
        """:meth:`encode` as a list of ints (short inputs skip numpy altogether)."""
        if len(data) <= self.small_bytes:
            return self._trie.encode_small(data)
        return self.encode(data).tolist()

    def encode_prefix(self, data: bytes) -> tuple[np.ndarray, int]:
        """Encode the part of ``data`` whose encoding does not depend on what may follow it.

        For streaming: returns the ids of ``data[:used]`` and ``used``; ``data[used:]`` (at most
        about :data:`BLOCK_BYTES`) must be encoded again with the bytes that come after it.
        """
        parts = []
        start, n = 0, len(data)
        while start < n:
            stop = min(n, start + self._block_bytes)
            ids, used = self._encode_block(data[start:stop], final=False)
            parts.append(ids)
            start += used
            if stop == n or not used:
                break
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return ids, start

    def cuts(self, data: bytes) -> np.ndarray:
        """Positions ``p`` (1..len-1) with a cut between ``data[p - 1]`` and ``data[p]``: the
        encoding of ``data`` is that of ``data[:p]`` followed by that of ``data[p:]``."""
        u8 = np.frombuffer(data, np.uint8)
        pairs = (u8[:-1].astype(np.intp) << 8) | u8[1:]
        return np.flatnonzero(self._cut[pairs]) + 1

    def encode_joined(self, data: bytes, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode strings joined into ``data``, each on its own.

        ``bounds``: int64 ``[K + 1]``, the strings' start offsets then ``len(data)``, non-decreasing;
        ``len(data) <= BLOCK_BYTES``. Returns the ids back to back (int32 ``[T]``) and where each
        string's ids start, then ``T`` (int64 ``[K + 1]``).
        """
        if len(data) > BLOCK_BYTES:
            raise ValueError("encode_joined takes at most BLOCK_BYTES")
        if not len(data):
            return np.zeros(0, np.int32), np.zeros(len(bounds), np.int64)
        ids, chunk_starts, counts = self._encode_block(data, final=True, forced=bounds[1:-1], detail=True)
        # Every bound is a chunk start (or the end), so it maps to that chunk's first token.
        token_at = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=token_at[1:])
        return ids, token_at[np.searchsorted(chunk_starts, bounds)]

    def clear_cache(self) -> None:
        """Forget cached chunk encodings (they only save time)."""
        with self._lock:
            self._clear_cache()

    # ------------------------------------------------------------------ one block

    def _encode_block(self, data: bytes, final: bool, forced: np.ndarray | None = None, detail: bool = False):
        """Encode one block; return ``(ids, bytes used)``.

        A block that is not the last stops at its last cut: the rest belongs to the next block.
        With ``detail`` (final blocks only) return ``(ids, chunk starts, tokens per chunk)``.
        """
        n = len(data)
        buf = data + self._pad
        u8 = np.frombuffer(buf, np.uint8)
        pairs = u8[: n - 1].astype(np.uint16)
        pairs <<= 8
        pairs |= u8[1:n]
        cut = np.take(self._cut, pairs)
        if forced is not None and forced.size:
            inner = forced[(forced > 0) & (forced < n)]
            cut[inner - 1] = True
        cuts = np.flatnonzero(cut)
        cuts += 1
        used = n
        if not final:
            if not cuts.size:
                return self._encode_uncut(data)
            used = int(cuts[-1])
            cuts = cuts[:-1]
        starts = np.empty(cuts.size + 1, np.int64)
        starts[0] = 0
        starts[1:] = cuts
        lengths = np.empty_like(starts)
        np.subtract(cuts, starts[:-1], out=lengths[:-1])
        lengths[-1] = used - starts[-1]
        with self._lock:
            self._make_room(used)
            values, placed = self._lookup(buf, starts, lengths)
            if not values.all():
                self._encode_cold(u8, buf, starts, lengths, values, placed)
            if values.min() > 0:
                ids, counts = values.astype(np.int32), None  # every chunk is one token
            else:
                ids, counts = self._segments.expand(values)
        if detail:
            return ids, starts, np.ones(len(starts), np.int64) if counts is None else counts
        return ids, used

    def _encode_uncut(self, data: bytes) -> tuple[np.ndarray, int]:
        """A block (not the last) without a cut: keep the tokens that cannot reach past its end.

        A token starting ``max_token_bytes`` or more before the end saw every byte it could match,
        and so did the tokens before it; the others are encoded again with the next block.
        """
        ids, _ = self._encode_block(data, final=True)
        lengths = self._lengths_by_id[ids]
        starts = np.cumsum(lengths) - lengths
        keep = int(np.searchsorted(starts, len(data) - self.max_token_bytes, side="right"))
        return ids[:keep], int(starts[keep - 1] + lengths[keep - 1]) if keep else 0

    # ------------------------------------------------------------------ chunk lookup

    def _lookup(self, buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, list]:
        """Chunk-table value of each chunk (int64 ``[M]``, 0 where unknown).

        Chunks that are neither tokens nor cached are added to the cache; also returns where they
        went: ``(chunk indices, slots, table)`` per table (slot -1: no room).
        """
        top = _CLASSES[0][2]
        longer = np.flatnonzero(lengths > top)
        # Every chunk goes through the first table, a longer one by its prefix; those values are
        # overwritten below. Cheaper than gathering the short chunks out and their values back.
        values = self._tokens[0].get(
            pack(buf, starts, np.minimum(lengths, top) if longer.size else lengths, 1)
        )
        if longer.size:
            values[longer] = self._token_values_longer(buf, starts[longer], lengths[longer])
        placed = []
        unknown = np.flatnonzero(values == 0)
        if unknown.size:
            unknown_lengths = lengths[unknown]
            for table, (words, low, high) in zip(self._cache, _CLASSES, strict=True):
                if low == 1 and not longer.size:
                    sel = unknown
                else:
                    sel = unknown[(unknown_lengths >= low) & (unknown_lengths <= high)]
                if not sel.size:
                    continue
                keys = pack(buf, starts[sel], lengths[sel], words)
                found = table.get(keys)
                values[sel] = found
                new = np.flatnonzero(found == 0)
                if new.size:
                    # Add the new ones: equal chunks get one slot, which will hold their segment.
                    sel = sel[new]
                    placed.append((sel, table.insert([k[new] for k in keys], absent=True), table))
        return values, placed

    def _token_values_longer(self, buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Token-table values of chunks of more than one word (0 where not a token); chunks too
        long for a key are looked up in dicts, the cache's included."""
        values = np.zeros(len(starts), np.int64)
        for table, (words, low, high) in zip(self._tokens[1:], _CLASSES[1:], strict=True):
            which = np.flatnonzero((lengths >= low) & (lengths <= high))
            if which.size:
                values[which] = table.get(pack(buf, starts[which], lengths[which], words))
        longest = np.flatnonzero(lengths > _KEYED_MAX)
        if longest.size:
            token, cached = self._long_tokens.get, self._long_cache.get
            ends = (starts + lengths)[longest].tolist()
            chunks = map(buf.__getitem__, map(slice, starts[longest].tolist(), ends))
            values[longest] = [token(chunk) or -cached(chunk, 0) for chunk in chunks]
        return values

    def _make_room(self, n_bytes: int) -> None:
        """Clear the cache if it is half full, or if a block of ``n_bytes`` might not fit in the
        segment store. Only between blocks: segments found by a block's lookups must stay valid
        until it is done."""
        if (
            any(2 * table.used > table.size for table in self._cache)
            or len(self._long_cache) > _LONG_CACHE_MAX
            or self._segments.n + n_bytes > self._SEGMENTS_MAX
            or self._segments.pool_used + n_bytes > self._POOL_MAX
        ):
            self._clear_cache()

    def _clear_cache(self) -> None:
        for table in self._cache:
            table.clear()
        self._long_cache.clear()
        self._segments.clear()

    # ------------------------------------------------------------------ cold chunks

    def _encode_cold(self, u8, buf, starts, lengths, values, placed) -> None:
        """Encode the chunks whose ``values`` are 0, cache them, and fill in their values.

        ``placed`` is from :meth:`_lookup`. Each distinct chunk is encoded once (the first to
        claim its slot); chunks the cache had no room for are encoded one by one.
        """
        reps = []
        fresh = []
        for chunks, chunk_slots, table in placed:
            unplaced = chunk_slots < 0
            if unplaced.any():
                reps.append(chunks[unplaced])
                chunks, chunk_slots = chunks[~unplaced], chunk_slots[~unplaced]
            table.scratch[chunk_slots] = chunks
            first = table.scratch[chunk_slots] == chunks
            reps.append(chunks[first])
            fresh.append((chunks, chunk_slots, first, table))
        longer = np.flatnonzero((lengths > _KEYED_MAX) & (values == 0))
        ends = (starts + lengths)[longer].tolist()
        long_chunks = list(map(buf.__getitem__, map(slice, starts[longer].tolist(), ends)))
        long_rep: dict[bytes, int] = {}
        for j, chunk in zip(longer.tolist(), long_chunks, strict=True):
            long_rep.setdefault(chunk, j)
        reps.append(np.fromiter(long_rep.values(), np.int64, len(long_rep)))
        rep = np.concatenate(reps)

        tokens, counts = self._segment(u8, starts[rep], lengths[rep])
        values[rep] = -self._segments.add(tokens, counts)
        for chunks, chunk_slots, first, table in fresh:
            table.values[chunk_slots[first]] = values[chunks[first]]
            values[chunks] = table.values[chunk_slots]
        for j, chunk in zip(longer.tolist(), long_chunks, strict=True):
            values[j] = values[long_rep[chunk]]
            if len(chunk) <= _LONG_CACHE_MAX_BYTES:
                self._long_cache[chunk] = -int(values[j])

    def _segment(self, u8, starts, lengths) -> tuple[np.ndarray, np.ndarray]:
        """Greedy encoding of the chunks ``u8[starts[i] : starts[i] + lengths[i]]``.

        Returns their tokens back to back (int32) and each chunk's token count (int64 ``[R]``).
        The first tokens of all chunks are found together, one token per chunk per step; the few
        chunks still unfinished after that are done by :meth:`_segment_everywhere`.
        """
        at = starts.copy()
        end = starts + lengths
        chunk = np.arange(len(starts))
        counts = np.zeros(len(starts), np.int64)
        rounds: list[tuple[np.ndarray, np.ndarray]] = []
        for step in range(_TOKEN_ROUNDS):
            if not at.size:
                break
            best_id, best_len = self._trie.longest(u8, at, end)
            rounds.append((chunk, best_id))
            at += best_len
            going = at < end
            counts[chunk[~going]] = step + 1
            at, end, chunk = at[going], end[going], chunk[going]
        if at.size:
            rest_tokens, rest_counts = self._segment_everywhere(u8, at, end - at)
            counts[chunk] = _TOKEN_ROUNDS + rest_counts
        first = np.cumsum(counts) - counts
        tokens = np.empty(int(counts.sum()), np.int32)
        for step, (chunk_k, ids_k) in enumerate(rounds):
            tokens[first[chunk_k] + step] = ids_k
        if at.size:
            rest_first = np.cumsum(rest_counts) - rest_counts
            where = np.repeat(first[chunk] + _TOKEN_ROUNDS - rest_first, rest_counts)
            where += np.arange(len(rest_tokens))
            tokens[where] = rest_tokens
        return tokens, counts

    def _segment_everywhere(self, u8, starts, lengths) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`_segment`, for long chunks: the longest match at every byte position at
        once, then a walk along the matches from each chunk's start."""
        total = int(lengths.sum())
        base = np.cumsum(lengths) - lengths  # where each chunk's bytes start in the flat arrays
        pos = np.repeat(starts - base, lengths) + np.arange(total)  # byte position in u8
        best_id, best_len = self._trie.longest(u8, pos, np.repeat(starts + lengths, lengths))
        return self._walk(best_id, best_len, base, lengths)

    @staticmethod
    def _walk(best_id, best_len, base, lengths) -> tuple[np.ndarray, np.ndarray]:
        """Follow the longest matches from each chunk's start, all chunks in step."""
        n_chunks = len(base)
        at = base.copy()
        stop = base + lengths
        chunk = np.arange(n_chunks)
        counts = np.zeros(n_chunks, np.int64)
        rounds: list[tuple[np.ndarray, np.ndarray]] = []
        for step in range(_MAX_WALK_ROUNDS):
            if not at.size:
                break
            rounds.append((chunk, best_id[at]))
            at = at + best_len[at]
            going = at < stop
            counts[chunk[~going]] = step + 1
            at, stop, chunk = at[going], stop[going], chunk[going]
        tails: list[tuple[int, list[int]]] = []
        for c, i, end in zip(chunk.tolist(), at.tolist(), stop.tolist(), strict=True):
            # A few long chunks are left: one token at a time beats many nearly empty array steps.
            ids_part = best_id[i:end].tolist()
            len_part = best_len[i:end].tolist()
            tail, k = [], 0
            while k < end - i:
                tail.append(ids_part[k])
                k += len_part[k]
            tails.append((c, tail))
            counts[c] = _MAX_WALK_ROUNDS + len(tail)
        first = np.cumsum(counts) - counts
        tokens = np.empty(int(counts.sum()), np.int32)
        for step, (chunk_k, ids_k) in enumerate(rounds):
            tokens[first[chunk_k] + step] = ids_k
        for c, tail in tails:
            start = int(first[c]) + _MAX_WALK_ROUNDS
            tokens[start : start + len(tail)] = tail
        return tokens, counts
