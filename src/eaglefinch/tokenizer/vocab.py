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

# One line; group 2 is a plain single-quoted literal (no quote or backslash inside, so its text is
# its value), group 3 any other literal, left to ast.literal_eval.
_LINE = re.compile(r"^([0-9]+) (?:'([^'\\\n]*)'|(.+)) ([0-9]+)$", re.MULTILINE)


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


def _first_bad_line(lines: list[str], source: str) -> TokenizerError:
    for number, line in enumerate(lines, start=1):
        if not _LINE.fullmatch(line):
            return TokenizerError(
                f"{source}:{number}: expected 'ID LITERAL LENGTH' (e.g. 33 'hello' 5), got {line[:80]!r}"
            )
    return TokenizerError(f"{source}: malformed vocabulary")  # unreachable when counts disagree


def _first_bad_entry(
    ids: list[int], pieces: list[bytes], length_texts: list[str], source: str
) -> TokenizerError:
    """The error for the first line whose entry breaks a rule (only called once one is known to)."""
    first_line: dict[bytes, int] = {}
    id_line: dict[int, int] = {}
    for number, (token_id, piece, length_text) in enumerate(
        zip(ids, pieces, length_texts, strict=True), start=1
    ):
        where = f"{source}:{number}"
        if len(piece) != int(length_text):
            return TokenizerError(
                f"{where}: id {token_id} is {len(piece)} bytes long, the line says {length_text}"
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
    rows = _LINE.findall(text)
    if len(rows) != len(lines):
        raise _first_bad_line(lines, source)
    if not rows:
        raise TokenizerError(f"{source}: the vocabulary is empty")
    id_texts, plains, others, length_texts = (list(map(itemgetter(k), rows)) for k in range(4))
    # Column-wise, in C loops: this runs on every load.
    pieces = list(map(str.encode, plains))
    for index in [i for i, plain in enumerate(plains) if not plain]:
        # An empty group 2 is either a non-plain literal (group 3) or the empty literal ''.
        pieces[index] = _literal(others[index], f"{source}:{index + 1}") if others[index] else b""
    ids = list(map(int, id_texts))
    lengths_ok = list(map(len, pieces)) == list(map(int, length_texts))
    piece_set = set(pieces)
    unique = len(set(ids)) == len(ids) and len(piece_set) == len(pieces)
    if not (lengths_ok and unique and min(ids) > END_OF_TEXT and b"" not in pieces):
        raise _first_bad_entry(ids, pieces, length_texts, source)
    by_id: list[bytes | None]
    if ids == list(range(1, len(ids) + 1)):
        by_id = [b"", *pieces]
    else:
        by_id = [None] * (max(ids) + 1)
        by_id[END_OF_TEXT] = b""
        for token_id, piece in zip(ids, pieces, strict=True):
            by_id[token_id] = piece
    missing = [b for b in range(256) if bytes([b]) not in piece_set]
    if missing:
        raise TokenizerError(
            f"{source}: single bytes {missing[:8]} are not tokens; greedy matching needs all 256"
        )
    return Vocabulary(by_id=tuple(by_id), source=source)


def load_vocab(path: str | Path | None = None) -> Vocabulary:
    """Read a vocabulary file, or the bundled ``rwkv_vocab_v20230424`` when ``path`` is None."""
    if path is None:
        resource = resources.files(__package__).joinpath(BUNDLED_VOCAB)
        return parse_vocab(resource.read_text(encoding="utf-8"), source=BUNDLED_VOCAB)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such vocabulary file") from None
    except UnicodeDecodeError as error:
        raise TokenizerError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return parse_vocab(text, source=str(path))
