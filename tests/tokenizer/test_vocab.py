"""Reading vocabulary files: the bundled one, and the errors for broken ones."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer import WorldTokenizer, load_vocab, parse_vocab

BYTES_LINES = "".join(f"{b + 1} {bytes([b])!r} 1\n" for b in range(256))


def test_bundled_vocabulary_is_the_published_file():
    data = resources.files("eaglefinch.tokenizer").joinpath("rwkv_vocab_v20230424.txt").read_bytes()
    assert (
        hashlib.sha256(data).hexdigest() == "8324476023347dec2964625ccb2075c864d250a9c6d9a74f36daba628de8c008"
    )
    notice = resources.files("eaglefinch.tokenizer").joinpath("NOTICE").read_text(encoding="utf-8")
    assert "Apache License" in notice and "BlinkDL" in notice


def test_bundled_vocabulary_contents(reference):
    vocab = load_vocab()
    assert len(vocab.by_id) == 65530  # ids 1..65529 and 0, end of text
    assert vocab.by_id[0] == b""
    assert vocab.vocab_size == 65536
    assert vocab.max_token_bytes == 128
    assert len(vocab.ids) == 65529
    # Every entry as the reference reads it (with eval).
    assert {i: vocab.by_id[i] for i in range(1, 65530)} == reference.idx2token


def test_small_vocabulary_with_every_literal_kind():
    text = BYTES_LINES + "300 'ab' 2\n301 b'\\xe4\\xbd' 2\n302 '\\u4f60\\u597d' 6\n303 \"it's\" 4\n"
    vocab = parse_vocab(text, "small")
    assert vocab.by_id[300] == b"ab"
    assert vocab.by_id[301] == b"\xe4\xbd"
    assert vocab.by_id[302] == "你好".encode()
    assert vocab.by_id[303] == b"it's"
    assert vocab.by_id[257] is None  # ids need not be contiguous
    assert vocab.vocab_size == 320


@pytest.mark.parametrize(
    "line, message",
    [
        ("300 'ab' 3", "2 bytes long, the line says 3"),
        ("300 ab 2", "not a Python str or bytes literal"),
        ("300 __import__('os').system('true') 1", "not a Python str or bytes literal"),
        ("300 ['a'] 1", "not a str or bytes literal (it is a list)"),
        ("300 7 1", "not a str or bytes literal (it is a int)"),
        ("300 'ab'", "expected 'ID LITERAL LENGTH'"),
        ("x 'ab' 2", "expected 'ID LITERAL LENGTH'"),
        ("\u0663 'ab' 2", "expected 'ID LITERAL LENGTH'"),  # a digit, but not an ASCII one
        ("", "expected 'ID LITERAL LENGTH'"),
        ("0 'ab' 2", "id 0 is reserved"),
        ("5 'ab' 2", "id 5 is already defined on line 5"),
        ("300 'a' 1", "b'a' is already defined on line 98"),
        ("300 '' 0", "empty string"),
        ("300 '\\ud800' 3", "not encodable as UTF-8"),
    ],
)
def test_malformed_line_is_named(line, message):
    text = BYTES_LINES + "290 'ok' 2\n" + line + "\n291 'fine' 4\n"
    with pytest.raises(TokenizerError) as error:
        parse_vocab(text, "bad.txt")
    assert "bad.txt:258:" in str(error.value)
    assert message in str(error.value)


def test_missing_single_bytes_are_an_error():
    text = "".join(f"{b + 1} {bytes([b])!r} 1\n" for b in range(255))
    with pytest.raises(TokenizerError, match=r"single bytes \[255\] are not tokens"):
        parse_vocab(text, "short.txt")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="empty"):
        parse_vocab("", "empty.txt")
    with pytest.raises(TokenizerError, match="no such vocabulary file"):
        load_vocab(tmp_path / "nope.txt")
    (tmp_path / "latin1.txt").write_bytes(b"1 '\xe9' 1\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        load_vocab(tmp_path / "latin1.txt")


def test_undefined_ids_are_the_model_outputs_the_reference_has_no_token_for(reference):
    tok = WorldTokenizer()
    defined = set(reference.idx2token) | {0}  # and end of text
    assert set(tok.undefined_ids(65536)) == set(range(65536)) - defined == set(range(65530, 65536))
    assert tok.undefined_ids(1000) == ()
