"""The pieces under the encoder, against plain-Python versions: packed keys and their hash
table, the double-array trie, and the cut rule."""

from __future__ import annotations

import random

import numpy as np

from eaglefinch.tokenizer.table import PackedTable, max_length, pack
from eaglefinch.tokenizer.trie import ByteTrie


def _strings(rng: random.Random, count: int, low: int, high: int, alphabet: bytes) -> list[bytes]:
    return [bytes(rng.choice(alphabet) for _ in range(rng.randint(low, high))) for _ in range(count)]


def _keys(strings: list[bytes], words: int) -> list[np.ndarray]:
    buf = b"".join(strings) + bytes(8 * words)
    lengths = np.array([len(s) for s in strings], np.int64)
    return pack(buf, np.cumsum(lengths) - lengths, lengths, words)


def test_packing_is_exact():
    # Strings that differ only by trailing zero bytes or length still get different keys.
    strings = [b"a", b"a\0", b"a\0\0", b"\0", b"\0\0", b"abcdefg", b"abcdefg\0", b"abcdefgh", b"abcdefgh\0"]
    for words in (2, 4):
        keys = _keys(strings, words)
        assert len({tuple(int(k[i]) for k in keys) for i in range(len(strings))}) == len(strings)
    assert [int(k) for k in _keys([b"a", b"a\0", b"\0"], 1)[0]] == [0x61 | 1 << 56, 0x61 | 2 << 56, 1 << 56]
    assert max_length(1) == 7 and max_length(2) == 15 and max_length(4) == 31


def test_table_against_a_dict():
    rng = random.Random(0)
    for words, low, high in ((1, 1, 7), (2, 8, 15), (4, 16, 31)):
        # A small alphabet makes many near-identical keys; a small table makes long probe runs.
        stored = list(dict.fromkeys(_strings(rng, 1500, low, high, b"ab\0")))
        table = PackedTable(words, 12)
        slots = table.insert(_keys(stored, words))
        assert len(set(slots.tolist())) == len(stored) == table.used
        table.values[slots] = np.arange(1, len(stored) + 1)
        expected = {s: i + 1 for i, s in enumerate(stored)}
        queries = stored + _strings(rng, 1500, low, high, b"ab\0c")
        got = table.get(_keys(queries, words))
        assert got.tolist() == [expected.get(q, 0) for q in queries]
        # Inserting again finds the same slots, and equal keys in one call share one.
        again = table.insert(_keys(stored + stored[:10], words))
        assert again.tolist() == slots.tolist() + slots[:10].tolist()
        assert table.used == len(stored)
        # Keys known to be new (with repeats among them), as the encoder adds chunks it missed.
        fresh = PackedTable(words, 12)
        batch = stored[::2] + stored[::6]
        placed = fresh.insert(_keys(batch, words), absent=True)
        first_slot = {}
        for key, slot in zip(batch, placed.tolist(), strict=True):
            assert first_slot.setdefault(key, slot) == slot
        assert len(set(first_slot.values())) == len(first_slot) == fresh.used
        fresh.values[placed] = 5
        assert (fresh.get(_keys(stored[::2], words)) == 5).all()


def test_table_stops_at_its_limit():
    rng = random.Random(1)
    stored = list(dict.fromkeys(_strings(rng, 400, 1, 7, b"abcdef")))
    table = PackedTable(1, 9)
    slots = table.insert(_keys(stored, 1), limit=100)
    assert table.used <= 100
    placed = slots >= 0
    assert 0 < placed.sum() <= 100 and not placed.all()
    table.values[slots[placed]] = 7
    got = table.get(_keys(stored, 1))
    assert (got[placed] == 7).all() and (got[~placed] == 0).all()
    table.clear()
    assert table.used == 0 and not table.get(_keys(stored, 1)).any()


MAX_PIECE = 40


def _longest_by_hand(pieces: dict[bytes, int], data: bytes, pos: int, limit: int) -> tuple[int, int]:
    for n in range(min(limit - pos, MAX_PIECE), 0, -1):
        if data[pos : pos + n] in pieces:
            return pieces[data[pos : pos + n]], n
    raise AssertionError("single bytes are tokens")


def test_trie_longest_match_against_brute_force():
    rng = random.Random(2)
    pieces = {bytes([b]): b + 1 for b in range(256)}
    for s in _strings(rng, 3000, 2, MAX_PIECE, b"abc \n\xe4\xbd"):
        pieces.setdefault(s, len(pieces) + 1)
    items = list(pieces.items())
    rng.shuffle(items)
    blob = b"".join(p for p, _ in items)
    trie = ByteTrie(
        [p for p, _ in items], np.array([i for _, i in items]), np.array([len(p) for p, _ in items]), blob
    )
    data = b"".join(rng.choice([p for p, _ in items[:400]]) for _ in range(300)) + bytes(trie.max_depth)
    n = len(data) - trie.max_depth
    pos = np.array(sorted(rng.sample(range(n), 500)))
    limit = np.minimum(pos + np.array([rng.randint(1, 50) for _ in pos]), n)
    ids, lengths = trie.longest(np.frombuffer(data, np.uint8), pos, limit)
    expected = [
        _longest_by_hand(pieces, data, p, q) for p, q in zip(pos.tolist(), limit.tolist(), strict=True)
    ]
    assert list(zip(ids.tolist(), lengths.tolist(), strict=True)) == expected
    # And the byte-at-a-time walk used for short inputs.
    text = data[:n]
    out, i = [], 0
    while i < n:
        token, length = _longest_by_hand(pieces, text, i, n)
        out.append(token)
        i += length
    assert trie.encode_small(text) == out


def test_cuts_are_token_boundaries(tok):
    """No token contains the byte pair across a cut, so the encoding splits there."""
    encoder = tok._encoder
    data = "The cut rule: 你好, мир! def f(x):\n    return x  # done\n".encode()
    cuts = encoder.cuts(data).tolist()
    assert cuts and cuts == sorted(set(cuts))
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert sum((tok.encode_bytes(p) for p in pieces), []) == tok.encode_bytes(data)
    inside = {p[k : k + 2] for p in tok.vocab.pieces for k in range(len(p) - 1)}
    assert all(data[c - 1 : c + 1] not in inside for c in cuts)
