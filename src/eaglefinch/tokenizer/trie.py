"""The vocabulary as a byte trie in double-array form, walked for many positions at once.

Node ``s`` (an int) has child ``t = base[s] + b`` for byte ``b`` exactly when ``check[t] == s``;
``token[s]`` is the id of the token spelled by the path to ``s`` (0 if it is not a token). One
step of a walk is thus two gathers and a compare for every position being walked, with no probing
and no key building. Children of a node occupy their own span of slots (from the smallest child
byte to the largest), which keeps the build a few whole-array steps.
"""

from __future__ import annotations

import numpy as np

ROOT = 0


class ByteTrie:
    """Double-array trie of byte strings ``pieces[i]`` with ids ``ids[i]`` (ids > 0, pieces distinct,
    every single byte among them)."""

    ARRAYS = ("base", "check", "token", "best_token", "best_length", "pair_node")

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the trie is, as arrays (for :meth:`from_arrays`)."""
        out = {name: getattr(self, name) for name in self.ARRAYS}
        out["max_depth"] = np.array(self.max_depth)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ByteTrie:
        trie = cls.__new__(cls)
        for name in cls.ARRAYS:
            setattr(trie, name, np.ascontiguousarray(arrays[name], dtype=np.int32))
        trie.max_depth = int(arrays["max_depth"])
        trie._lists = None
        return trie

    def __init__(self, pieces: list[bytes], ids: np.ndarray, lengths: np.ndarray, blob: bytes) -> None:
        """``lengths[i] = len(pieces[i])``; ``blob`` is the pieces joined, in order."""
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.cumsum(lengths) - lengths
        order = np.array(sorted(range(len(pieces)), key=pieces.__getitem__), dtype=np.int64)
        sorted_ids = np.asarray(ids, dtype=np.int64)[order]
        lengths = lengths[order]
        width = int(lengths.max())
        n = len(pieces)
        # Pieces as rows of a zero-padded byte matrix, in sorted order.
        matrix = np.zeros((n, width), np.uint8)
        column = np.arange(width)
        inside = column[None, :] < lengths[:, None]
        matrix[inside] = np.frombuffer(blob, np.uint8)[(offsets[order][:, None] + column[None, :])[inside]]

        # In sorted order, piece i shares its first lcp[i] bytes with piece i - 1 and adds the
        # trie nodes for its prefixes of lcp[i] + 1 .. len bytes.
        lcp = np.zeros(n, np.int64)
        if n > 1:
            differ = matrix[1:] != matrix[:-1]
            first_diff = np.where(differ.any(axis=1), differ.argmax(axis=1), width)
            lcp[1:] = np.minimum(first_diff, np.minimum(lengths[1:], lengths[:-1]))
        new = lengths - lcp
        first_node = np.cumsum(new) - new  # nodes are numbered piece by piece (root apart)
        n_nodes = int(new.sum())
        piece_of = np.repeat(np.arange(n), new)
        depth = np.arange(n_nodes) - np.repeat(first_node, new) + np.repeat(lcp + 1, new)
        label = matrix[piece_of, depth - 1]

        # Parent of a node: the piece's node one byte shorter. For the first new node of piece i
        # that prefix (lcp[i] bytes) was added by the first piece with it: the last j < i with
        # lcp[j] < lcp[i] (bytes sort, so pieces sharing a prefix are consecutive).
        owner = np.zeros(n, np.int64)
        index = np.arange(n)
        for v in np.unique(lcp[lcp > 0]).tolist():
            last_below = np.maximum.accumulate(np.where(lcp < v, index, 0))
            owner[lcp == v] = last_below[lcp == v]
        parent = np.arange(n_nodes) - 1  # flat index of the parent, -1 for the root
        first_new = first_node
        shared = lcp > 0
        parent[first_new] = -1
        parent[first_new[shared]] = first_node[owner[shared]] + lcp[shared] - lcp[owner[shared]] - 1
        parent_flat = parent + 1  # root is flat index 0, node k is k + 1

        # Span of child bytes per parent; children sit at span_start - min_byte + byte.
        n_flat = n_nodes + 1
        low = np.full(n_flat, 256, np.int64)
        high = np.full(n_flat, -1, np.int64)
        np.minimum.at(low, parent_flat, label)
        np.maximum.at(high, parent_flat, label)
        span = np.where(high >= 0, high - low + 1, 0)
        span_start = 1 + np.cumsum(span) - span  # slot 0 is the root
        offset = np.where(high >= 0, span_start - low, 0)
        slot = np.zeros(n_flat, np.int64)
        slot[1:] = offset[parent_flat] + label
        size = int(span.sum()) + 1 + 256  # room for base + any byte past the last span

        self.base = np.zeros(size, np.int32)
        self.base[slot] = offset
        self.check = np.full(size, -1, np.int32)
        self.check[slot[1:]] = slot[parent_flat]
        self.token = np.zeros(size, np.int32)
        is_token = depth == lengths[piece_of]
        self.token[slot[1:][is_token]] = sorted_ids[piece_of[is_token]]
        self.max_depth = width
        self._lists: tuple[list[int], ...] | None = None  # the arrays as lists, for encode_small
        # Node of every two-byte prefix, by a << 8 | b (-1: none): a walk's first two steps in
        # one gather.
        self.pair_node = np.full(1 << 16, -1, np.int32)
        two = np.flatnonzero(depth == 2)
        self.pair_node[(label[parent[two]].astype(np.int64) << 8) | label[two]] = slot[1:][two]

        # The longest token on the path to each node (the node itself included), and its length:
        # where a walk stops, this is the longest match. Filled level by level, parents first.
        self.best_token = np.zeros(size, np.int32)
        self.best_length = np.zeros(size, np.int32)
        by_depth = np.argsort(depth, kind="stable")
        level_end = np.searchsorted(depth[by_depth], np.arange(1, width + 1), side="right")
        level_start = 0
        for d in range(1, width + 1):
            nodes = by_depth[level_start : level_end[d - 1]]
            level_start = level_end[d - 1]
            here = slot[1:][nodes]
            up = slot[parent_flat[nodes]]
            own = self.token[here]
            self.best_token[here] = np.where(own != 0, own, self.best_token[up])
            self.best_length[here] = np.where(own != 0, d, self.best_length[up])

    def longest(self, u8: np.ndarray, pos: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Longest token starting at each ``pos`` and ending by ``limit``: ids (int32) and lengths
        (int64), ``[P]``.

        ``u8`` holds the bytes, followed by at least ``max(2, max_depth)`` padding bytes; ``pos <
        limit <= len(u8) - max(2, max_depth)``. Fastest when a walk rarely passes its limit (true
        where the limit is a cut, see :mod:`.greedy`).
        """
        first = u8[pos]
        pair = first.astype(np.intp) << 8
        pair |= u8[pos + 1]
        node = self.pair_node[pair]
        going = node >= 0
        deepest = np.where(going, node, self.base[ROOT] + first.astype(np.int32))
        active = np.flatnonzero(going)
        node = node[active]
        at = pos[active] + 2  # next byte to read
        # Walk every position down the trie until its bytes leave it; where it stops is the
        # deepest node, whose best token is the longest match.
        while active.size:
            child = self.base[node] + u8[at]
            going = self.check[child] == node
            active, node, at = active[going], child[going], at[going]
            at += 1
            deepest[active] = node
        best_id = self.best_token[deepest]
        best_len = self.best_length[deepest].astype(np.int64)
        over = np.flatnonzero(pos + best_len > limit)
        if over.size:
            best_id[over], best_len[over] = self._longest_bounded(u8, pos[over], limit[over])
        return best_id, best_len

    def _longest_bounded(
        self, u8: np.ndarray, pos: np.ndarray, limit: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`longest` that checks the limit at every step."""
        node = self.base[ROOT] + u8[pos].astype(np.int32)
        best_id = self.token[node]
        best_len = np.ones(len(pos), np.int64)
        active = np.flatnonzero(pos + 1 < limit)
        node = node[active]
        at = pos[active] + 1  # next byte to read
        end = limit[active]
        depth = 1
        while active.size:
            depth += 1
            child = self.base[node] + u8[at]
            ok = self.check[child] == node
            active, child, at, end = active[ok], child[ok], at[ok], end[ok]
            token = self.token[child]
            has = np.flatnonzero(token)
            best_id[active[has]] = token[has]
            best_len[active[has]] = depth
            at += 1
            going = at < end
            active, node, at, end = active[going], child[going], at[going], end[going]
        return best_id, best_len

    def encode_small(self, data: bytes) -> list[int]:
        """Greedy encoding of ``data`` one byte at a time, in plain Python (for short inputs)."""
        if self._lists is None:
            self._lists = (
                self.base.tolist(),
                self.check.tolist(),
                self.best_token.tolist(),
                self.best_length.tolist(),
            )
        base, check, best_token, best_length = self._lists
        root = base[ROOT]
        out = []
        i, n = 0, len(data)
        while i < n:
            node = root + data[i]
            j = i + 1
            while j < n:
                child = base[node] + data[j]
                if check[child] != node:
                    break
                node = child
                j += 1
            out.append(best_token[node])
            i += best_length[node]
        return out
