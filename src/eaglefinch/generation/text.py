"""Turning a growing list of token ids into text pieces: whole UTF-8 characters only, stop strings cut.

A World token can end in the middle of a multi-byte character (each byte of an emoji may be its
own token), so text is decoded incrementally from bytes: a piece never contains half a character.
Text that could be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol


class Tokenizer(Protocol):
    """What generation needs from a tokenizer (``eaglefinch.WorldTokenizer`` has it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, tokens: Sequence[int]) -> bytes: ...


def undefined_ids(tokenizer: Tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Ids a model of ``vocab_size`` outputs can give that ``tokenizer`` cannot decode (none
    known for a tokenizer without ``undefined_ids``)."""
    find = getattr(tokenizer, "undefined_ids", None)
    return tuple(find(vocab_size)) if find is not None else ()


class TextStream:
    """Per-row incremental decoder with stop strings.

    ``push(bytes)`` returns the text that is now final; ``stopped`` turns true once a stop string
    has appeared (the stop string and anything after it are dropped); ``flush()`` returns what is
    left at the end of generation.
    """

    def __init__(self, stop: Sequence[str] = ()):
        self.stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded text not yet released (a stop string may start in it)
        self.text = ""  # everything released so far
        self.stopped = False

    def _release(self, final: bool) -> str:
        text = self._pending
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = text[:cut], ""
        elif final:
            out, self._pending = text, ""
        else:
            # hold back the longest tail that is a proper prefix of some stop string
            hold = 0
            for s in self.stop:
                for n in range(min(len(s) - 1, len(text)), hold, -1):
                    if text.endswith(s[:n]):
                        hold = n
                        break
            out, self._pending = text[: len(text) - hold], text[len(text) - hold :]
        self.text += out
        return out

    def push(self, data: bytes) -> str:
        """Add the bytes of new tokens; return the newly final text ('' if none)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def flush(self) -> str:
        """End of generation: release held-back text and any incomplete character (as U+FFFD)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)
