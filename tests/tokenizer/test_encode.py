"""Encoding: the same ids as the reference greedy tokenizer, for every kind of input.

Short inputs take a plain-Python path and longer ones the vectorised one (blocks, chunks, cache);
``vectorised`` is a tokenizer that sends every input down the vectorised path, with tiny blocks.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eaglefinch import WorldTokenizer
from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer import greedy

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def vectorised():
    """Every input through the array path, in blocks of 300 bytes (many block ends)."""
    tokenizer = WorldTokenizer()
    tokenizer._encoder.small_bytes = 0
    tokenizer._encoder._block_bytes = 300
    return tokenizer


# ---------------------------------------------------------------- corpora


def test_every_language_of_the_sample(tok, vectorised, reference, udhr):
    for doc in udhr:
        expected = reference.encode(doc["text"])
        assert tok.encode(doc["text"]) == expected, doc["code"]
        assert vectorised.encode(doc["text"]) == expected, doc["code"]
    scripts = {doc["script"] for doc in udhr}
    assert {"Arabic", "Devanagari", "Cjk", "Hangul", "Hiragana", "Cyrillic", "Latin", "Thai"} <= scripts


def test_corpora_joined(tok, reference, udhr, kjv):
    text = "\n\n".join([d["text"] for d in kjv] + [d["text"] for d in udhr])
    assert len(text.encode()) > greedy.SMALL_BYTES
    assert tok.encode(text) == reference.encode(text)
    tok.clear_cache()
    assert tok.encode(text) == reference.encode(text)  # the cache never changes a result


def test_standard_library_code(tok, reference, stdlib_code):
    for name, data in stdlib_code:
        assert tok.encode_bytes(data) == reference.encodeBytes(data), name


def test_long_input_in_blocks(reference, kjv, udhr, stdlib_code):
    """Block ends fall everywhere: mid-word, mid-character, in long runs without a cut."""
    tokenizer = WorldTokenizer()
    tokenizer._encoder._block_bytes = 1000
    data = b"".join([kjv[0]["text"].encode(), stdlib_code[0][1][:20_000], udhr[20]["text"].encode()])
    data += (" " * 2500 + "x" * 2500 + "🎉" * 700).encode()  # no cuts for thousands of bytes
    assert tokenizer.encode_bytes(data) == reference.encodeBytes(data)


def test_cache_overflow_and_refill(monkeypatch, reference, udhr):
    """A cache too small for a block's chunks: some are not kept, then it is cleared."""
    monkeypatch.setattr(greedy, "_CACHE_BITS", (6, 6, 6))
    tokenizer = WorldTokenizer()
    tokenizer._encoder._block_bytes = 4000
    text = "\n".join(doc["text"] for doc in udhr[:30])
    expected = reference.encode(text)
    assert tokenizer.encode(text) == expected
    assert tokenizer.encode(text) == expected


# ---------------------------------------------------------------- generated inputs


@SETTINGS
@given(st.text())
def test_any_text(tok, vectorised, reference, text):
    expected = reference.encode(text)
    assert tok.encode(text) == expected
    assert vectorised.encode(text) == expected


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes(tok, vectorised, reference, data):
    expected = reference.encodeBytes(data)
    assert tok.encode_bytes(data) == expected
    assert vectorised.encode_bytes(data) == expected


PIECES = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "the",
    " the",
    "re",
    "e",
    "ab",
    "-",
    "=",
    "#",
    "你",
    "好",
    "。",
    "ا",
    "ل",
    "न",
    "म",
    "🎉",
    "\u200d",
    "\x00",
    "\x7f",
    "é",
    "e\u0301",
    "😀",
    "\U0001f1fa\U0001f1f8",
]


@SETTINGS
@given(st.lists(st.sampled_from(PIECES), max_size=400))
def test_runs_of_common_pieces(tok, vectorised, reference, pieces):
    """Repetitive text: long runs of spaces, newlines and repeated words, where tokens are long."""
    text = "".join(pieces)
    expected = reference.encode(text)
    assert tok.encode(text) == expected
    assert vectorised.encode(text) == expected


def test_random_slices_of_the_vocabulary(tok, reference):
    """Strings made of tokens and pieces of tokens, joined at random."""
    rng = random.Random(0)
    pieces = [p for p in tok.vocab.pieces if len(p) > 1]
    for _ in range(200):
        parts = []
        for _ in range(rng.randrange(1, 40)):
            piece = rng.choice(pieces)
            start = rng.randrange(len(piece))
            parts.append(piece[start : start + rng.randrange(1, len(piece) + 1)])
        data = b"".join(parts)
        assert tok.encode_bytes(data) == reference.encodeBytes(data)


# ---------------------------------------------------------------- particular cases


def test_empty_input(tok):
    assert tok.encode("") == []
    assert tok.encode_bytes(b"") == []
    assert tok.encode_array("").shape == (0,)
    assert tok.count("") == 0


def test_longest_entry(tok, reference):
    spaces = tok.bytes_to_id(b" " * 128)
    assert tok.id_to_bytes(spaces) == b" " * 128 and tok.max_token_bytes == 128
    assert tok.encode(" " * 128) == [spaces]
    for n in (127, 129, 255, 256, 257, 1000, 5000):
        assert tok.encode(" " * n) == reference.encode(" " * n)
    assert tok.encode(" " * 300)[:2] == [spaces, spaces]


@pytest.mark.parametrize("run", [" ", "\n", "\t", "\r\n", "-", "=", "#", "*", "0", "a", "你", "🎉", "\x00"])
def test_runs_of_one_character(tok, reference, run):
    for n in (1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 300):
        assert tok.encode(run * n) == reference.encode(run * n), (run, n)


def test_control_characters_and_invalid_utf8(tok, reference):
    text = "".join(chr(c) for c in range(32)) + "\x7f\x80\x9f\u2028\u2029\ufeff"
    assert tok.encode(text) == reference.encode(text)
    for data in (
        bytes(range(256)),
        bytes(range(255, -1, -1)),
        b"\xff" * 50,
        b"\xe4\xbd" * 20,
        b"\xc0\xaf",
        b"\xed\xa0\x80",
    ):
        assert tok.encode_bytes(data) == reference.encodeBytes(data)


def test_longest_match_wins_over_shorter(tok):
    """Hand-picked: each string is one token although shorter tokens also match its start."""
    for text in [
        " international",
        " understanding",
        "\n\n\n\n",
        " " * 64,
        "================================",
    ]:
        token = tok.bytes_to_id(text)
        assert tok.encode(text) == [token]
        shorter = [p for p in (text[:k] for k in range(1, len(text))) if p.encode() in tok.vocab.pieces]
        assert shorter, text  # a shorter match exists, and is not taken


def test_greedy_is_not_the_shortest_encoding(tmp_path):
    """With the tokens ab, abc, cd, bcd: "abcd" is greedy abc + d, not ab + cd or a + bcd."""
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    lines += ["257 'ab' 2", "258 'abc' 3", "259 'cd' 2", "260 'bcd' 3", "261 'abcdefgh' 8"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = WorldTokenizer(path)
    a, d, e = ord("a") + 1, ord("d") + 1, ord("e") + 1
    assert tokenizer.encode("abcd") == [258, d]
    assert tokenizer.encode("abcdefgh") == [261]
    assert tokenizer.encode("abcdefg") == [258, d, e, ord("f") + 1, ord("g") + 1]  # abcdefgh is cut short
    assert tokenizer.encode("xabcd") == [ord("x") + 1, 258, d]
    assert tokenizer.encode("aab") == [a, 257]
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    reference = TRIE_TOKENIZER(str(path))
    rng = random.Random(1)
    for _ in range(300):
        text = "".join(rng.choice("abcdefghx") for _ in range(rng.randrange(0, 40)))
        assert tokenizer.encode(text) == reference.encode(text)
    tokenizer._encoder.small_bytes = 0
    text = "".join(rng.choice("abcdefghx ") for _ in range(5000))
    assert tokenizer.encode(text) == reference.encode(text)


def test_batch_equals_one_by_one(tok, udhr):
    texts = ["", "Hello world", " " * 200, "", "你好，世界", "x"] + [d["text"] for d in udhr[:40]] + [""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([t.encode() for t in texts]) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []
    big = "word " * 300_000  # over a block: encoded on its own
    assert tok.encode_batch(["a", big, "b"]) == [tok.encode("a"), tok.encode(big), tok.encode("b")]


def test_batch_strings_never_join(tok):
    """Neighbours that would make one token if joined are still encoded apart."""
    parts = [" " * 64, " " * 64, "\n", "\n", "=" * 16, "=" * 16, "ab", "c"]
    assert tok.encode_batch(parts) == [tok.encode(p) for p in parts]


def test_array_and_count(tok):
    text = "Tokenizers count tokens. 数一数。"
    assert tok.encode_array(text).tolist() == tok.encode(text)
    assert tok.encode_array(text.encode()).tolist() == tok.encode(text)
    assert tok.count(text) == len(tok.encode(text))


def test_bad_input_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="must be str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="must be bytes"):
        tok.encode_bytes("text")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match=r"texts\[1\]"):
        tok.encode_batch(["ok", 5])  # type: ignore[list-item]
    assert tok.encode_bytes(bytearray(b"abc")) == tok.encode_bytes(memoryview(b"abc")) == tok.encode("abc")
