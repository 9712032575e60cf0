"""Decoding a stream of ids, such as a model's output during generation, into text as it comes.

A token may end in the middle of a UTF-8 character (an emoji is often two or three tokens), so
text is released only up to the last complete character; the bytes after it wait for the next ids.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

import numpy as np

from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer.decoding import Decoder, Errors, as_id_array


class StreamDecoder:
    """Incremental decoder: ``feed(ids) -> str`` of the newly completed text, ``finish() -> str``.

    With ``errors="replace"`` (the default, for generation) an unknown id or a byte sequence that
    cannot be UTF-8 becomes U+FFFD; with ``"strict"`` it raises :class:`TokenizerError`. Joining
    every ``feed`` and the ``finish`` gives ``tokenizer.decode(all_ids, errors)``.
    """

    def __init__(self, decoder: Decoder, errors: Errors = "replace") -> None:
        if errors not in ("strict", "replace"):
            raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
        self._decoder = decoder
        self._errors = errors
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors)
        self._fed_ids = 0

    def feed(self, ids: int | Iterable[int] | np.ndarray) -> str:
        """Add ids; return the text of every character they complete."""
        array = as_id_array([ids] if isinstance(ids, (int, np.integer)) else ids)
        data = self._decoder.decode(array, self._errors)
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as error:
            raise TokenizerError(
                f"ids up to #{self._fed_ids + len(array)} are not valid UTF-8: {error.reason}"
            ) from None
        self._fed_ids += len(array)
        return text

    def finish(self) -> str:
        """End of the stream: the rest (U+FFFD for an unfinished character, or an error if strict)."""
        try:
            text = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise TokenizerError(f"the ids end inside a UTF-8 character: {error.reason}") from None
        self._utf8.reset()
        self._fed_ids = 0
        return text

    @property
    def pending(self) -> bytes:
        """Bytes of the character started but not yet complete."""
        return self._utf8.getstate()[0]
