"""The binidx token format (Megatron / GPT-NeoX ``MMapIndexedDataset``), the one RWKV-LM trains from.

A corpus is two files with a common prefix:

``PREFIX.bin``
    every item's tokens back to back, little-endian, of one integer dtype (uint16 for World tokens).
``PREFIX.idx``
    ``b"MMIDIDX\\x00\\x00"`` (9 bytes), version ``<Q`` = 1, dtype code ``<B`` (8 = uint16),
    ``<Q`` number of items n, ``<Q`` length of the document index m, then
    ``sizes`` int32[n] (tokens per item), ``pointers`` int64[n] (byte offset of each item in .bin)
    and ``doc_idx`` int64[m] (item index where each document starts, from 0 to n).

Each document is written as one item ending with token 0 (end of text), as RWKV-LM's make_data.py
does, so the .bin alone is a flat token stream with documents separated by 0; the official trainer
samples windows from that flat stream, and so does ``eaglefinch.train``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from eaglefinch.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Megatron's codes (6 is Python ``float``, i.e. float64, as is 7); only integer ones hold tokens.
DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float64,
    8: np.uint16,
}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, items, doc_idx length


def dtype_code(dtype) -> int:
    dtype = np.dtype(dtype)
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == dtype and code != 6:
            return code
    raise DataError(f"binidx cannot store dtype {dtype}; use uint16 (vocabularies up to 65536) or int32")


def corpus_prefix(path: str | os.PathLike) -> Path:
    """Accept ``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx``; return ``PREFIX``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".bin", ".idx") else path


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


class BinidxWriter:
    """Write a binidx corpus document by document; files appear only when ``finalize`` succeeds.

    Both files are first written under temporary names, then renamed, .bin before .idx: a crash
    leaves either the previous corpus or none, and ``BinidxReader`` checks that an index fits its data.

        with BinidxWriter("out/corpus") as writer:
            writer.add_document(np.array([510, 33, 0], dtype=np.uint16))
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = corpus_prefix(prefix)
        self.dtype = np.dtype(dtype)
        self._code = dtype_code(self.dtype)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = self.prefix.parent / f".{self.prefix.name}.bin.tmp"
        self._idx_tmp = self.prefix.parent / f".{self.prefix.name}.idx.tmp"
        self._data = open(self._bin_tmp, "wb")
        self.sizes: list[int] = []
        self.doc_idx: list[int] = [0]
        self.num_tokens = 0
        self._done = False

    def add_document(self, tokens) -> None:
        """Append one document (an item followed by a document boundary)."""
        self.add_item(tokens)
        self.doc_idx.append(len(self.sizes))

    def add_item(self, tokens) -> None:
        array = np.asarray(tokens)
        if array.ndim != 1:
            raise DataError(f"a binidx item must be a 1-D token array, got shape {array.shape}")
        if array.size and array.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            lo, hi = int(array.min()), int(array.max())
            if lo < info.min or hi > info.max:
                raise DataError(f"token id {hi if hi > info.max else lo} does not fit in {self.dtype}")
            array = array.astype(self.dtype)
        self._data.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
        self.sizes.append(int(array.size))
        self.num_tokens += int(array.size)

    def finalize(self) -> Path:
        """Write the index and move both files into place; returns the prefix."""
        self._data.close()
        sizes = np.asarray(self.sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.asarray(self.doc_idx, dtype=np.int64)
        with open(self._idx_tmp, "wb") as index:
            index.write(_HEADER.pack(MAGIC, VERSION, self._code, len(sizes), len(doc_idx)))
            index.write(sizes.tobytes())
            index.write(pointers.tobytes())
            index.write(doc_idx.tobytes())
        _fsync_replace(self._bin_tmp, self.prefix.with_suffix(".bin"))
        _fsync_replace(self._idx_tmp, self.prefix.with_suffix(".idx"))
        self._done = True
        return self.prefix

    def abort(self) -> None:
        self._data.close()
        for tmp in (self._bin_tmp, self._idx_tmp):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> BinidxWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._done:
            self.finalize()
        elif not self._done:
            self.abort()


class BinidxReader:
    """A memory-mapped binidx corpus: ``reader[i]`` is item i, ``reader.tokens`` the flat stream.

    Attributes (numpy views into the mapped index): ``sizes`` int32[n], ``pointers`` int64[n],
    ``doc_idx`` int64[m]; ``dtype``; ``num_tokens``.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = corpus_prefix(prefix)
        bin_path, idx_path = self.prefix.with_suffix(".bin"), self.prefix.with_suffix(".idx")
        missing = [p.name for p in (bin_path, idx_path) if not p.is_file()]
        if missing:
            raise DataError(
                f"no corpus at {self.prefix} (missing {', '.join(missing)}); build one with `eaglefinch data`"
            )
        if idx_path.stat().st_size:
            index = np.memmap(idx_path, dtype=np.uint8, mode="r")
        else:
            index = np.zeros(0, np.uint8)
        if index.size < _HEADER.size:
            raise DataError(f"{idx_path} is too short to be a binidx index ({index.size} bytes)")
        magic, version, code, n_items, n_docs = _HEADER.unpack(index[: _HEADER.size].tobytes())
        if magic != MAGIC:
            raise DataError(f"{idx_path} is not a binidx index (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise DataError(f"{idx_path}: binidx version {version} is not supported (expected {VERSION})")
        if code not in DTYPE_CODES or code in (6, 7):
            raise DataError(f"{idx_path}: dtype code {code} is not an integer token type")
        self.dtype = np.dtype(DTYPE_CODES[code])
        need = _HEADER.size + 4 * n_items + 8 * n_items + 8 * n_docs
        if index.size < need:
            raise DataError(f"{idx_path} is truncated: {index.size} bytes, the header promises {need}")
        offset = _HEADER.size
        self.sizes = np.frombuffer(index, dtype=np.int32, count=n_items, offset=offset)
        self.pointers = np.frombuffer(index, dtype=np.int64, count=n_items, offset=offset + 4 * n_items)
        self.doc_idx = np.frombuffer(index, dtype=np.int64, count=n_docs, offset=offset + 12 * n_items)
        data_bytes = bin_path.stat().st_size
        end = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if n_items else 0
        if end > data_bytes:
            raise DataError(f"{bin_path} is truncated: index needs {end} bytes, file has {data_bytes}")
        self.tokens = (
            np.memmap(bin_path, dtype=self.dtype, mode="r", shape=(data_bytes // self.dtype.itemsize,))
            if data_bytes
            else np.zeros(0, dtype=self.dtype)
        )
        self.num_tokens = int(self.tokens.size)
        self._index = index

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sizes[i])]

    @property
    def num_documents(self) -> int:
        return max(len(self.doc_idx) - 1, 0)

    def document(self, d: int) -> np.ndarray:
        """Tokens of document d (its items joined; one item per document as eaglefinch writes them)."""
        first, last = int(self.doc_idx[d]), int(self.doc_idx[d + 1])
        if first == last:
            return np.zeros(0, dtype=self.dtype)
        start = int(self.pointers[first]) // self.dtype.itemsize
        end = int(self.pointers[last - 1]) // self.dtype.itemsize + int(self.sizes[last - 1])
        return self.tokens[start:end]
