"""Fixtures for the tokenizer tests: our tokenizer, the reference, and text to try them on.

The reference is the official ``rwkv`` package's ``TRIE_TOKENIZER`` reading the package's own
copy of the vocabulary, so it shares no code or data file with ours.
"""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_table_cache(tmp_path_factory):
    """Tokenizers built here keep their tables in a temporary folder, not the user's cache."""
    old = os.environ.get("EAGLEFINCH_CACHE_DIR")
    os.environ["EAGLEFINCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("table-cache"))
    yield
    if old is None:
        del os.environ["EAGLEFINCH_CACHE_DIR"]
    else:
        os.environ["EAGLEFINCH_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tok():
    from eaglefinch import WorldTokenizer

    return WorldTokenizer()


@pytest.fixture(scope="session")
def reference():
    rwkv = pytest.importorskip("rwkv")
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="session")
def udhr() -> list[dict]:
    return [json.loads(line) for line in open(DATA / "udhr_sample.jsonl", encoding="utf-8")]


@pytest.fixture(scope="session")
def kjv() -> list[dict]:
    return [json.loads(line) for line in open(DATA / "kjv_sample.jsonl", encoding="utf-8")]


@pytest.fixture(scope="session")
def stdlib_code() -> list[tuple[str, bytes]]:
    """About 300 KB of the standard library's source: every 25th module, as raw bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[::25]
    out, total = [], 0
    for path in files:
        data = path.read_bytes()
        out.append((path.name, data))
        total += len(data)
        if total > 300_000:
            break
    return out
