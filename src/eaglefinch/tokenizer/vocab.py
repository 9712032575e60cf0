"""Reading a World vocabulary file: one ``ID LITERAL LENGTH`` line per token.

``LITERAL`` is a Python ``str`` or ``bytes`` literal (``str`` stands for its UTF-8 bytes) and
``LENGTH`` its length in bytes. Id 0 is not in the file: it is the end-of-text token, which has no
bytes. Literals are read with :func:`ast.literal_eval`, never ``eval``; the ~99% of lines that are a
single-quoted ``str`` without escapes are read verbatim, which is the same value, only faster.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from operator import itemgetter
from pathlib import Path

import numpy as np

from eaglefinch.errors import TokenizerError

BUNDLED_VOCAB = "rwkv_vocab_v20230424.txt"
END_OF_TEXT = 0

# A line whose literal is single-quoted with no quote or backslash inside (its text is its value),
# and a line with any other literal (for ast.literal_eval). Two patterns without alternation run
# several times faster over the file than one with it.
_PLAIN = re.compile(r"^([0-9]+) '([^'\\\n]*)' ([0-9]+)$", re.MULTILINE)
_OTHER = re.compile(r"^([0-9]+) (?!'[^'\\\n]*' [0-9]+$)(.+) ([0-9]+)$", re.MULTILINE)
_LINE = re.compile(r"([0-9]+) (.+) ([0-9]+)")


@dataclass(frozen=True)
class Vocabulary:
    """Token bytes by id.

    ``by_id[i]`` is the byte string of id ``i``, ``None`` for an id the file does not define, and
    ``b""`` for id 0 (end of text). ``vocab_size`` is the embedding height the models use: the
    largest id plus one, rounded up to a multiple of 64 (65,536 for the bundled file).
    """

    by_id: tuple[bytes | None, ...]
    source: str

    @property
    def vocab_size(self) -> int:
        return -(-len(self.by_id) // 64) * 64

    @cached_property
    def ids(self) -> np.ndarray:
        """Ids of the tokens (id 0 and undefined ids excluded), ascending: int64 ``[N]``."""
        if self.by_id[1:].count(None) == 0:
            return np.arange(1, len(self.by_id), dtype=np.int64)
        return np.array([i for i, piece in enumerate(self.by_id) if piece], dtype=np.int64)

    @cached_property
    def pieces(self) -> list[bytes]:
        """Bytes of each token, in the order of :attr:`ids`."""
        if len(self.ids) == len(self.by_id) - 1:
            return list(self.by_id[1:])  # type: ignore[arg-type]
        return [self.by_id[i] for i in self.ids.tolist()]  # type: ignore[misc]

    @cached_property
    def lengths(self) -> np.ndarray:
        """Byte length of each token, in the order of :attr:`ids`: int64 ``[N]``."""
        return np.fromiter(map(len, self.pieces), np.int64, len(self.pieces))

    @cached_property
    def blob(self) -> bytes:
        """The tokens' bytes end to end, in the order of :attr:`ids`."""
        return b"".join(self.pieces)

    @property
    def max_token_bytes(self) -> int:
        return int(self.lengths.max())

    @classmethod
    def from_arrays(
        cls, ids: np.ndarray, lengths: np.ndarray, blob: bytes, n_ids: int, source: str
    ) -> Vocabulary:
        """The vocabulary whose :attr:`ids`, :attr:`lengths` and :attr:`blob` these are."""
        if (
            len(ids) != len(lengths)
            or int(lengths.sum()) != len(blob)
            or (len(ids) and int(ids.max()) >= n_ids)
        ):
            raise ValueError("arrays do not describe a vocabulary")
        ends = np.cumsum(lengths)
        pieces = list(map(blob.__getitem__, map(slice, (ends - lengths).tolist(), ends.tolist())))
        by_id: list[bytes | None] = [None] * n_ids
        by_id[END_OF_TEXT] = b""
        for token_id, piece in zip(ids.tolist(), pieces, strict=True):
            by_id[token_id] = piece
        vocab = cls(by_id=tuple(by_id), source=source)
        # Fill the cached properties with what is at hand.
        vocab.__dict__.update(
            ids=np.asarray(ids, np.int64), pieces=pieces, lengths=np.asarray(lengths, np.int64), blob=blob
        )
        return vocab


def _literal(text: str, where: str) -> bytes:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise TokenizerError(f"{where}: {text!r} is not a Python str or bytes literal ({error})") from None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise TokenizerError(f"{where}: {text!r} is not encodable as UTF-8") from None
    if isinstance(value, bytes):
        return value
    raise TokenizerError(f"{where}: {text!r} is not a str or bytes literal (it is a {type(value).__name__})")


def _diagnose(lines: list[str], source: str) -> TokenizerError:
    """The error for the first line that breaks a rule (called once some line is known to)."""
    first_line: dict[bytes, int] = {}
    id_line: dict[int, int] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{source}:{number}"
        match = _LINE.fullmatch(line)
        if not match:
            return TokenizerError(
                f"{where}: expected 'ID LITERAL LENGTH' (e.g. 33 'hello' 5), got {line[:80]!r}"
            )
        token_id, piece, length = int(match[1]), _literal(match[2], where), int(match[3])
        if len(piece) != length:
            return TokenizerError(
                f"{where}: id {token_id} is {len(piece)} bytes long, the line says {length}"
            )
        if not piece:
            return TokenizerError(f"{where}: id {token_id} is an empty string")
        if token_id == END_OF_TEXT:
            return TokenizerError(f"{where}: id 0 is reserved for end of text")
        if token_id in id_line:
            return TokenizerError(f"{where}: id {token_id} is already defined on line {id_line[token_id]}")
        if piece in first_line:
            return TokenizerError(f"{where}: {piece!r} is already defined on line {first_line[piece]}")
        id_line[token_id] = number
        first_line[piece] = number
    return TokenizerError(f"{source}: malformed vocabulary")


def parse_vocab(text: str, source: str = "<vocabulary>") -> Vocabulary:
    """Parse the text of a vocabulary file; raise :class:`TokenizerError` naming the first bad line.

    Checks: every line has the ``ID LITERAL LENGTH`` form, ``LENGTH`` is the literal's byte length,
    ids are unique and at least 1, no byte string appears twice (greedy matching would be
    ambiguous), and every single byte 0..255 is a token (so every input can be encoded).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise TokenizerError(f"{source}: the vocabulary is empty")
    # Column-wise, in C loops where possible: this runs on every load. Lines come out grouped by
    # kind, not in file order; the checks below do not need the order, and on a failure
    # _diagnose reads the file again line by line to name the first bad one.
    plain = _PLAIN.findall(text)
    other = _OTHER.findall(text)
    if len(plain) + len(other) != len(lines):
        raise _diagnose(lines, source)
    rows = plain + other
    id_texts, literals, length_texts = (list(map(itemgetter(k), rows)) for k in range(3))
    try:
        pieces = list(map(str.encode, literals[: len(plain)]))
        pieces += [_literal(literal, source) for literal in literals[len(plain) :]]
    except TokenizerError:
        raise _diagnose(lines, source) from None
    ids = list(map(int, id_texts))
    lengths_ok = list(map(len, pieces)) == list(map(int, length_texts))
    piece_set = set(pieces)
    unique = len(set(ids)) == len(ids) and len(piece_set) == len(pieces)
    if not (lengths_ok and unique and min(ids) > END_OF_TEXT and b"" not in piece_set):
        raise _diagnose(lines, source)
    by_id: list[bytes | None] = [None] * (max(ids) + 1)
    by_id[END_OF_TEXT] = b""
    for token_id, piece in zip(ids, pieces, strict=True):
        by_id[token_id] = piece
    missing = [b for b in range(256) if bytes([b]) not in piece_set]
    if missing:
        raise TokenizerError(
            f"{source}: single bytes {missing[:8]} are not tokens; greedy matching needs all 256"
        )
    return Vocabulary(by_id=tuple(by_id), source=source)


def read_vocab_file(path: str | Path | None = None) -> tuple[bytes, str]:
    """The bytes of a vocabulary file (None: the bundled one) and a name for it in messages."""
    if path is None:
        return resources.files(__package__).joinpath(BUNDLED_VOCAB).read_bytes(), BUNDLED_VOCAB
    try:
        return Path(path).read_bytes(), str(path)
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such vocabulary file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, not a vocabulary file") from None


def decode_vocab_file(data: bytes, source: str) -> Vocabulary:
    """Parse the bytes of a vocabulary file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TokenizerError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if "\r" in text:
        # Line ends as text mode reads them (the published file has CRLF); literals spell a
        # carriage return as an escape, so a raw one is always part of a line end.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return parse_vocab(text, source)


def load_vocab(path: str | Path | None = None) -> Vocabulary:
    """Read a vocabulary file, or the bundled ``rwkv_vocab_v20230424`` when ``path`` is None."""
    return decode_vocab_file(*read_vocab_file(path))
