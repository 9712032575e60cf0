"""The disk cache of built tables: used when present, rebuilt when missing or damaged."""

from __future__ import annotations

import pytest

from eaglefinch import WorldTokenizer
from eaglefinch.tokenizer import cache, greedy


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGLEFINCH_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_second_load_reads_the_cache(cache_folder, monkeypatch, udhr, kjv):
    first = WorldTokenizer()
    saved = list(cache_folder.glob("*.npz"))
    assert len(saved) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("tables were built although they are cached")

    monkeypatch.setattr(greedy.GreedyEncoder, "_build", no_build)
    second = WorldTokenizer()
    text = "\n".join(d["text"] for d in udhr + kjv) + " " * 300 + "🎉"
    assert second.encode(text) == first.encode(text)
    assert second.vocab.by_id == first.vocab.by_id
    ids = first.encode(text)
    assert second.decode(ids) == text


def test_damaged_cache_is_rebuilt(cache_folder, udhr):
    WorldTokenizer()
    (saved,) = cache_folder.glob("*.npz")
    text = udhr[3]["text"]
    expected = WorldTokenizer().encode(text)
    saved.write_bytes(b"not a zip file")
    assert WorldTokenizer().encode(text) == expected
    key = saved.name.removeprefix("world-tokenizer-").removesuffix(".npz")
    arrays = cache.load(key)
    assert arrays is not None and "trie_base" in arrays  # rewritten
    cache.save(key, {"unrelated": arrays["cut"]})  # readable, but not what the loader expects
    assert WorldTokenizer().encode(text) == expected


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGLEFINCH_CACHE_DIR", "")
    assert cache.cache_dir() is None
    assert WorldTokenizer().encode("off") == WorldTokenizer().encode("off")
    assert not list(tmp_path.iterdir())


def test_key_depends_on_the_vocabulary():
    assert cache.key_for(b"1 'a' 1\n") != cache.key_for(b"1 'b' 1\n")
    assert cache.key_for(b"x") == cache.key_for(b"x")
