"""Decoding: the exact inverse of encoding, clear errors for unknown ids, and streaming."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eaglefinch.errors import TokenizerError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.text())
def test_text_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.int64)) == text  # the array path
    assert tok.decode(tuple(ids)) == text


@SETTINGS
@given(st.binary(max_size=3000))
def test_bytes_round_trip(tok, data):
    ids = tok.encode_bytes(data)
    assert tok.decode_bytes(ids) == data
    assert tok.decode_bytes(np.array(ids, dtype=np.uint16)) == data


def test_corpus_round_trip(tok, udhr, kjv, stdlib_code):
    text = "\n".join(d["text"] for d in udhr + kjv)
    assert tok.decode(tok.encode(text)) == text
    for _, data in stdlib_code:
        assert tok.decode_bytes(tok.encode_bytes(data)) == data


def test_matches_reference_decoder(tok, reference, udhr):
    ids = tok.encode("\n".join(d["text"] for d in udhr))
    assert tok.decode_bytes(ids) == reference.decodeBytes(ids)


def test_every_id_decodes_to_its_bytes(tok):
    ids = list(range(1, 65530))
    assert tok.decode_bytes(ids) == b"".join(tok.vocab.pieces)
    assert all(tok.decode_bytes([i]) == tok.vocab.by_id[i] for i in range(1, 65530, 97))


def test_end_of_text_decodes_to_nothing(tok):
    hello = tok.encode("Hello")
    assert tok.decode([0]) == ""
    assert tok.decode([0, *hello, 0, 0, *hello, 0]) == "HelloHello"
    assert tok.decode(np.array([0, 0], np.int64)) == ""
    assert tok.end_of_text == 0


@pytest.mark.parametrize("bad", [65530, 65535, 65536, 100_000, -1, -65529, 2**40])
def test_unknown_id_is_an_error(tok, bad):
    for ids in ([bad], [33155, 0, bad, 33155], np.array([33155, bad], np.int64)):
        with pytest.raises(TokenizerError, match=f"id {bad} at position"):
            tok.decode(ids)
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode_bytes([bad])


def test_unknown_id_replaced_when_asked(tok):
    hello = tok.encode("Hello")
    assert tok.decode([*hello, 70000, *hello], errors="replace") == "Hello\ufffdHello"
    assert tok.decode_bytes([-5, 0], errors="replace") == "\ufffd".encode()
    assert tok.decode_batch([[70000], hello], errors="replace") == ["\ufffd", "Hello"]


@pytest.mark.parametrize("bad", [[1.5], ["12"], [None], [[1, 2]], [2**80]])
def test_non_integer_ids_are_an_error(tok, bad):
    with pytest.raises(TokenizerError):
        tok.decode(bad)
    with pytest.raises(TokenizerError):
        tok.decode(bad * 100)  # the long-input path too
    with pytest.raises(TokenizerError):
        tok.decode(np.array([1.0, 2.0]))


def test_split_character_is_an_error_unless_replaced(tok):
    ids = tok.encode_bytes("🎉".encode()[:3])
    with pytest.raises(TokenizerError, match="do not decode to UTF-8"):
        tok.decode(ids)
    assert tok.decode(ids, errors="replace") == "\ufffd"
    assert tok.decode_bytes(ids) == "🎉".encode()[:3]


def test_batch_decode(tok, udhr):
    batch = [tok.encode(d["text"]) for d in udhr[:20]] + [[], [0], tok.encode("🎉")]
    assert tok.decode_batch(batch) == [tok.decode(ids) for ids in batch]
    assert tok.decode_batch([]) == []
    assert tok.decode_batch([np.array(ids) for ids in batch]) == [tok.decode(ids) for ids in batch]


def test_stream_decoder_yields_whole_characters(tok):
    text = "Grüße 🎉🎉 你好 \U0001f1fa\U0001f1f8 done"
    ids = tok.encode(text)
    stream = tok.stream_decoder()
    pieces = []
    for i in ids:
        piece = stream.feed(i)
        piece.encode("utf-8")  # never half a character: always encodable
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert "".join(pieces) + stream.finish() == text
    # An emoji split over tokens: nothing until it is complete.
    emoji = tok.encode("🎉")
    assert len(emoji) > 1
    stream = tok.stream_decoder()
    assert [stream.feed(i) for i in emoji] == [""] * (len(emoji) - 1) + ["🎉"]
    assert stream.pending == b""


def test_stream_decoder_ends(tok):
    partial = tok.encode_bytes("🎉".encode()[:2])
    stream = tok.stream_decoder()
    assert stream.feed(partial) == ""
    assert stream.pending == "🎉".encode()[:2]
    assert stream.finish() == "\ufffd"
    strict = tok.stream_decoder(errors="strict")
    strict.feed(partial)
    with pytest.raises(TokenizerError, match="inside a UTF-8 character"):
        strict.finish()
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        strict.feed([99999])
    assert tok.stream_decoder().feed([99999]) == "\ufffd"
    assert tok.stream_decoder().feed(np.array(tok.encode("ab"))) == "ab"


def test_single_token_lookups(tok):
    assert tok.id_to_bytes(0) == b""
    assert tok.bytes_to_id(tok.id_to_bytes(33155)) == 33155
    assert tok.bytes_to_id("Hello") == 33155
    with pytest.raises(TokenizerError):
        tok.id_to_bytes(65530)
    with pytest.raises(TokenizerError):
        tok.bytes_to_id(b"not a single token at all")


def test_pickle_round_trip(tok):
    copy = pickle.loads(pickle.dumps(tok))
    text = "Pickled tokenizers encode the same. 同じ"
    assert copy.encode(text) == tok.encode(text)
    assert copy.vocab_size == 65536
