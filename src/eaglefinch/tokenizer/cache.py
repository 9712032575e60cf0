"""A disk cache of the tables built from a vocabulary, so that loading one takes little time.

Parsing the vocabulary file and building the trie and hash tables costs a few tenths of a second;
reading them back from a ``.npz`` file costs a few hundredths. The key is a hash of the
vocabulary file's bytes and of the source of the modules that build the tables, so an edited file
or a new version of the code never meets old tables. The file holds plain arrays, read with
``allow_pickle=False``: nothing in it can run code. Anything unreadable is ignored (and rebuilt).

Location: ``$EAGLEFINCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/eaglefinch``, else
``~/.cache/eaglefinch``; ``EAGLEFINCH_CACHE_DIR=""`` (empty) turns the cache off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

_BUILDERS = ("vocab.py", "trie.py", "table.py", "greedy.py", "cache.py")
_PREFIX = "world-tokenizer-"


def cache_dir() -> Path | None:
    """Where tables are kept, or None when caching is off."""
    configured = os.environ.get("EAGLEFINCH_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eaglefinch"


def key_for(vocab_file: bytes) -> str:
    """Hash of the vocabulary file and of the code that builds tables from it."""
    digest = hashlib.sha256(vocab_file)
    here = Path(__file__).parent
    for name in _BUILDERS:
        digest.update((here / name).read_bytes())
    digest.update(np.__version__.encode())
    return digest.hexdigest()[:32]


def load(key: str) -> dict[str, np.ndarray] | None:
    """The arrays saved under ``key``, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{_PREFIX}{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def save(key: str, arrays: dict[str, np.ndarray], keep: int = 4) -> None:
    """Save the arrays under ``key`` (atomically); keep only the ``keep`` newest saved files."""
    folder = cache_dir()
    if folder is None:
        return
    temporary = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=_PREFIX, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(temporary, folder / f"{_PREFIX}{key}.npz")
        temporary = None
        saved = sorted(folder.glob(f"{_PREFIX}*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in saved[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full disk only costs time on the next load
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
