"""``WorldTokenizer``: the RWKV World tokenizer (``rwkv_vocab_v20230424``), independent of the models.

Greedy longest match over UTF-8 bytes, left to right, with no pre-tokenisation: the ids are those
of the reference ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` for every input. Decoding is the exact
inverse. See :mod:`.greedy` for how encoding is made fast without a compiler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer import cache, files
from eaglefinch.tokenizer.decoding import Decoder, Errors, as_id_array
from eaglefinch.tokenizer.greedy import BLOCK_BYTES, GreedyEncoder
from eaglefinch.tokenizer.stream import StreamDecoder
from eaglefinch.tokenizer.vocab import END_OF_TEXT, Vocabulary, decode_vocab_file, read_vocab_file

Ids = Sequence[int] | np.ndarray
_SMALL_IDS = 64  # up to this many ids (a generation step) skip numpy


def _utf8(text: str, where: str = "text") -> bytes:
    if not isinstance(text, str):
        raise TokenizerError(f"{where} must be str, not {type(text).__name__} (use encode_bytes for bytes)")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TokenizerError(
            f"{where} is not valid Unicode: {error.reason} at index {error.start} ({text[error.start]!r})"
        ) from None


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TokenizerError(f"data must be bytes, not {type(data).__name__} (use encode for str)")


def _text(data: bytes, errors: Errors) -> str:
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as error:
        raise TokenizerError(
            f"the ids do not decode to UTF-8 text ({error.reason} at byte {error.start}); "
            "use decode_bytes, or errors='replace'"
        ) from None


class WorldTokenizer:
    """The RWKV World tokenizer.

    ``WorldTokenizer()`` loads the bundled vocabulary (65,529 tokens and id 0, end of text);
    ``WorldTokenizer(path)`` reads another file of the same format. ``vocab_size`` is the models'
    embedding height (65,536). Safe to share between threads; picklable.
    """

    end_of_text = END_OF_TEXT

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        self._vocab_path = None if vocab_path is None else str(vocab_path)
        data, source = read_vocab_file(vocab_path)
        key = cache.key_for(data)
        stored = cache.load(key)
        if stored is not None:
            try:
                vocab = Vocabulary.from_arrays(
                    stored["vocab_ids"],
                    stored["vocab_lengths"],
                    stored["vocab_blob"].tobytes(),
                    int(stored["vocab_size"]),
                    source,
                )
                self._setup(vocab, GreedyEncoder(vocab, built=stored))
                return
            except (KeyError, ValueError, TypeError, IndexError):
                pass  # not what this code writes: build afresh (and overwrite it)
        vocab = decode_vocab_file(data, source)
        self._setup(vocab, GreedyEncoder(vocab))
        arrays = self._encoder.built_arrays()
        arrays.update(
            vocab_ids=vocab.ids,
            vocab_lengths=vocab.lengths,
            vocab_size=np.array(len(vocab.by_id)),
            vocab_blob=np.frombuffer(vocab.blob, np.uint8),
        )
        cache.save(key, arrays)

    def _setup(self, vocab: Vocabulary, encoder: GreedyEncoder | None = None) -> None:
        self.vocab = vocab
        self._encoder = encoder if encoder is not None else GreedyEncoder(vocab)
        self._decoder = Decoder(vocab)
        self._id_of: dict[bytes, int] | None = None  # built on first use

    def __getstate__(self) -> dict:
        return {"vocab": self.vocab, "vocab_path": self._vocab_path}

    def __setstate__(self, state: dict) -> None:
        self._vocab_path = state["vocab_path"]
        self._setup(state["vocab"])

    def __repr__(self) -> str:
        return f"WorldTokenizer({self.vocab.source!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Rows of the models' embedding: the largest id plus one, rounded up to a multiple of 64."""
        return self.vocab.vocab_size

    @property
    def max_token_bytes(self) -> int:
        return self._encoder.max_token_bytes

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (its UTF-8 bytes)."""
        return self._encoder.encode_list(_utf8(text))

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> list[int]:
        """Ids of any bytes, invalid UTF-8 included."""
        return self._encoder.encode_list(_as_bytes(data))

    def encode_array(self, text: str | bytes) -> np.ndarray:
        """Like :meth:`encode` / :meth:`encode_bytes`, as an int32 array ``[T]`` (no Python ints)."""
        data = text if isinstance(text, (bytes, bytearray, memoryview)) else _utf8(text)
        return self._encoder.encode(_as_bytes(data))

    def count(self, text: str | bytes) -> int:
        """Number of tokens of a str or bytes."""
        return len(self.encode_array(text))

    def encode_batch(self, texts: Iterable[str | bytes]) -> list[list[int]]:
        """Ids of each text (str, or bytes taken as they are), encoded on its own.

        Short texts are encoded together in one pass, which is much faster than one call each.
        """
        datas = [
            t
            if isinstance(t, bytes)
            else _as_bytes(t)
            if isinstance(t, (bytearray, memoryview))
            else _utf8(t, f"texts[{k}]")
            for k, t in enumerate(texts)
        ]
        out: list[list[int]] = [[] for _ in datas]
        group: list[int] = []
        group_bytes = 0
        for k, data in enumerate(datas):
            if len(data) > BLOCK_BYTES // 4:
                out[k] = self._encoder.encode(data).tolist()
                continue
            if group_bytes + len(data) > BLOCK_BYTES:
                self._encode_group(datas, group, out)
                group, group_bytes = [], 0
            group.append(k)
            group_bytes += len(data)
        self._encode_group(datas, group, out)
        return out

    def _encode_group(self, datas: list[bytes], group: list[int], out: list[list[int]]) -> None:
        if not group:
            return
        sizes = np.array([len(datas[k]) for k in group], np.int64)
        bounds = np.zeros(len(group) + 1, np.int64)
        np.cumsum(sizes, out=bounds[1:])
        ids, token_at = self._encoder.encode_joined(b"".join(datas[k] for k in group), bounds)
        ids_list = ids.tolist()
        for k, start, stop in zip(group, token_at[:-1].tolist(), token_at[1:].tolist(), strict=True):
            out[k] = ids_list[start:stop]

    def encode_file(self, path: str | Path, *, processes: int = 1) -> Iterator[np.ndarray]:
        """Ids of a file's bytes, streamed as int32 arrays (constant memory, any file size).

        ``processes > 1`` encodes parts of a large file in that many worker processes.
        """
        return files.encode_file(self._encoder, path, processes=processes, vocab_path=self._vocab_path)

    def count_file(self, path: str | Path, *, processes: int = 1) -> int:
        """Number of tokens of a file's bytes."""
        return sum(len(ids) for ids in self.encode_file(path, processes=processes))

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Ids, errors: Errors = "strict") -> bytes:
        """Bytes of the ids, the exact inverse of :meth:`encode_bytes`. Id 0 (end of text) adds
        nothing. An id outside the vocabulary raises :class:`TokenizerError`, or with
        ``errors="replace"`` becomes the bytes of U+FFFD."""
        if isinstance(ids, (list, tuple)) and len(ids) <= _SMALL_IDS:
            small = self._decoder.decode_small(ids)
            if small is not None:
                return small
        return self._decoder.decode(as_id_array(ids), errors)

    def decode(self, ids: Ids, errors: Errors = "strict") -> str:
        """Text of the ids, the exact inverse of :meth:`encode`.

        Bytes that are not UTF-8 (ids that split a character) raise :class:`TokenizerError`, or
        with ``errors="replace"`` become U+FFFD, as do unknown ids.
        """
        return _text(self.decode_bytes(ids, errors), errors)

    def decode_batch(self, batch: Iterable[Ids], errors: Errors = "strict") -> list[str]:
        """:meth:`decode` of each sequence, in one pass."""
        arrays = [as_id_array(ids) for ids in batch]
        if not arrays:
            return []
        joined = np.concatenate(arrays)
        data = self._decoder.decode(joined, errors)
        if errors == "strict" or not len(self._decoder.unknown(joined)):
            byte_ends = np.cumsum(self._decoder.byte_lengths(joined))
        else:
            # Replaced ids changed the lengths: decode each sequence on its own.
            return [_text(self._decoder.decode(a, errors), errors) for a in arrays]
        token_ends = np.cumsum([len(a) for a in arrays])
        ends = [int(byte_ends[t - 1]) if t else 0 for t in token_ends.tolist()]
        starts = [0, *ends[:-1]]
        return [_text(data[s:e], errors) for s, e in zip(starts, ends, strict=True)]

    def stream_decoder(self, errors: Errors = "replace") -> StreamDecoder:
        """An incremental decoder for generation: ``feed(ids)`` returns text only up to the last
        complete UTF-8 character."""
        return StreamDecoder(self._decoder, errors)

    # ------------------------------------------------------------------ vocabulary

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (``b""`` for id 0)."""
        piece = self.vocab.by_id[token_id] if 0 <= token_id < len(self.vocab.by_id) else None
        if piece is None:
            raise TokenizerError(f"id {token_id} is not in the vocabulary")
        return piece

    def undefined_ids(self, vocab_size: int) -> tuple[int, ...]:
        """The ids below ``vocab_size`` (a model's output size) that this vocabulary does not define.

        World models have 65,536 outputs for 65,529 tokens (and id 0): a model gives the other ids
        some probability, untrained ones more than a little, and no text holds them, so generation
        never samples them.
        """
        return tuple(int(i) for i in self._decoder.unknown(np.arange(vocab_size)))

    def bytes_to_id(self, piece: bytes | str) -> int:
        """The id of a token given as its bytes (or text)."""
        key = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
        if self._id_of is None:
            self._id_of = dict(zip(self.vocab.pieces, self.vocab.ids.tolist(), strict=True))
        try:
            return self._id_of[key]
        except KeyError:
            raise TokenizerError(f"{piece!r} is not a token") from None

    def clear_cache(self) -> None:
        """Drop cached encodings of multi-token chunks (memory; results never depend on it)."""
        self._encoder.clear_cache()
