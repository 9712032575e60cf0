"""Encoding a file of any size in constant memory, in one process or several.

One process reads the file block by block and encodes what cannot change (see
:meth:`GreedyEncoder.encode_prefix`), carrying the rest over to the next block. Several processes
each take a part of the file: parts start at cuts (where the encoding restarts as from the start
of a text), so the parts' encodings joined are the encoding of the whole file.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer.greedy import GreedyEncoder
from eaglefinch.tokenizer.vocab import load_vocab

READ_BYTES = 1 << 22  # bytes read at a time
PART_BYTES = 1 << 24  # bytes of file per worker task
_CUT_WINDOW = 1 << 16  # bytes read to look for a cut near a part boundary


def encode_stream(
    encoder: GreedyEncoder, read: Callable[[int], bytes], read_bytes: int = READ_BYTES
) -> Iterator[np.ndarray]:
    """Ids of everything ``read(n)`` returns until it returns ``b""``, as int32 arrays.

    Holds at most ``read_bytes`` plus about one encoder block of input at a time.
    """
    carry = b""
    while True:
        data = read(read_bytes)
        if not data:
            if carry:
                yield encoder.encode(carry)
            return
        buffer = carry + data if carry else data
        ids, used = encoder.encode_prefix(buffer)
        if ids.size:
            yield ids
        carry = buffer[used:]


def _open(path: str | Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise TokenizerError(f"{path}: permission denied") from None


def _range_reader(handle, end: int) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        left = end - handle.tell()
        return handle.read(min(n, left)) if left > 0 else b""

    return read


def part_starts(encoder: GreedyEncoder, path: str | Path, part_bytes: int = PART_BYTES) -> list[int]:
    """Offsets where parts of the file start (0 first): the first cut at or after each multiple of
    ``part_bytes``. A stretch without a cut joins the part before it."""
    size = os.path.getsize(path)
    starts = [0]
    with _open(path) as handle:
        nominal = part_bytes
        while nominal < size:
            found = None
            at = nominal
            # Read windows from the byte before `at` until a cut or the next part's territory.
            while found is None and at < min(size, nominal + part_bytes):
                handle.seek(at - 1)
                window = handle.read(_CUT_WINDOW + 1)
                cuts = encoder.cuts(window)
                if cuts.size:
                    found = at - 1 + int(cuts[0])
                at += _CUT_WINDOW
            if found is not None and found > starts[-1] and found < size:
                starts.append(found)
            nominal += part_bytes
    return starts


_worker_encoder: GreedyEncoder | None = None


def _init_worker(encoder: GreedyEncoder | None, vocab_path: str | None) -> None:
    global _worker_encoder
    # Under "fork" the encoder comes along; otherwise each worker loads the vocabulary.
    if encoder is not None:
        # A lock copied while another thread of the parent held it would stay held forever.
        encoder._lock = threading.Lock()
        _worker_encoder = encoder
    else:
        _worker_encoder = GreedyEncoder(load_vocab(vocab_path))


def _encode_part(path: str, start: int, end: int, read_bytes: int) -> np.ndarray:
    if _worker_encoder is None:
        raise RuntimeError("worker not initialised")
    with _open(path) as handle:
        handle.seek(start)
        parts = list(encode_stream(_worker_encoder, _range_reader(handle, end), read_bytes))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def encode_file(
    encoder: GreedyEncoder,
    path: str | Path,
    *,
    processes: int = 1,
    vocab_path: str | None = None,
    read_bytes: int = READ_BYTES,
    part_bytes: int = PART_BYTES,
) -> Iterator[np.ndarray]:
    """Ids of the file's bytes, in order, as int32 arrays of at most about a part's tokens.

    With ``processes > 1`` parts of ``part_bytes`` are encoded in worker processes, at most two
    per process in flight, so memory stays bounded. ``vocab_path`` is the vocabulary of
    ``encoder`` (None: the bundled one), for workers that cannot inherit it.
    """
    path = str(path)
    if processes < 1:
        raise TokenizerError(f"processes must be at least 1, not {processes}")
    with _open(path):
        pass  # fail now, not at the first next()
    return _encode_file(encoder, path, processes, vocab_path, read_bytes, part_bytes)


def _encode_file(
    encoder: GreedyEncoder,
    path: str,
    processes: int,
    vocab_path: str | None,
    read_bytes: int,
    part_bytes: int,
) -> Iterator[np.ndarray]:
    size = os.path.getsize(path)
    if processes == 1 or size <= part_bytes:
        with _open(path) as handle:
            yield from encode_stream(encoder, handle.read, read_bytes)
        return
    starts = part_starts(encoder, path, part_bytes)
    ranges = list(zip(starts, [*starts[1:], size], strict=True))
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=context,
        initializer=_init_worker,
        initargs=(encoder if fork else None, vocab_path),
    ) as pool:
        pending: deque[Future] = deque()
        for start, end in ranges:
            pending.append(pool.submit(_encode_part, path, start, end, read_bytes))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
