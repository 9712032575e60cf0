"""The prefix cache: reused prefixes give what a fresh prefill gives, and skip the work."""

from __future__ import annotations

import pytest
import torch

import eaglefinch
from eaglefinch.errors import ConfigError, StateError
from eaglefinch.generation import PrefixCache, prefill


class CountingModel:
    """Counts the tokens the model is run on (wraps forward)."""

    def __init__(self, model, monkeypatch):
        self.tokens = 0
        original = model.forward

        def forward(tokens, state=None, **kwargs):
            self.tokens += tokens.numel()
            return original(tokens, state, **kwargs)

        monkeypatch.setattr(model, "forward", forward)


def tokens_of(n: int, seed: int) -> list[int]:
    return torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_shared_prefix_is_reused_and_results_match(finch, monkeypatch, relative_error):
    shared = tokens_of(300, 0)
    first, second = shared + tokens_of(50, 1), shared + tokens_of(70, 2)
    cache = PrefixCache(stride=128)
    counter = CountingModel(finch, monkeypatch)
    a = prefill(finch, first, cache=cache)
    assert counter.tokens == 350
    b = prefill(finch, second, cache=cache)
    assert counter.tokens == 350 + (370 - 256)  # resumed from the state stored at 256
    assert cache.stats.hits == 1 and cache.stats.tokens_reused == 256
    fresh_a, fresh_b = prefill(finch, first), prefill(finch, second)
    for cached, fresh in ((a, fresh_a), (b, fresh_b)):
        assert cached.tokens == fresh.tokens
        assert relative_error(cached.logits, fresh.logits) < 1e-5
        assert relative_error(cached.state.wkv, fresh.state.wkv) < 1e-5


def test_repeated_prompt_costs_nothing(finch, monkeypatch, byte_tokenizer):
    cache = PrefixCache()
    prompt = "A prompt asked twice."
    first = eaglefinch.generate(finch, byte_tokenizer, prompt, 10, temperature=0, cache=cache, stop_tokens=())
    counter = CountingModel(finch, monkeypatch)
    again = eaglefinch.generate(finch, byte_tokenizer, prompt, 10, temperature=0, cache=cache, stop_tokens=())
    assert counter.tokens == 0  # no prefill at all; decoding runs on the packed decoder
    assert again == first
    # the cached entry is not changed by generating from it
    assert (
        eaglefinch.generate(finch, byte_tokenizer, prompt, 10, temperature=0, cache=cache, stop_tokens=())
        == first
    )


def test_cache_is_bounded_and_least_recently_used(finch):
    one = prefill(finch, [1])
    entry = sum(t.numel() * t.element_size() for t in one.state.tensors().values()) + one.logits.numel() * 4
    cache = PrefixCache(max_bytes=3 * entry, stride=10_000)
    for i in range(3):
        prefill(finch, [1, 2, i + 3], cache=cache)
    assert len(cache) == 3 and cache.nbytes == 3 * entry
    assert cache.lookup(finch, [1, 2, 3]).length == 3  # touch the oldest
    prefill(finch, [9, 9], cache=cache)  # evicts [1, 2, 4], now the least recently used
    assert len(cache) == 3
    assert cache.lookup(finch, [1, 2, 4, 7]) is None
    assert cache.lookup(finch, [1, 2, 3, 7]).length == 3


def test_cache_belongs_to_one_model(finch, eagle):
    cache = PrefixCache()
    prefill(finch, [1, 2, 3], cache=cache)
    with pytest.raises(StateError, match="another model"):
        prefill(eagle, [1, 2, 3], cache=cache)


def test_bad_cache_settings():
    with pytest.raises(ConfigError):
        PrefixCache(stride=0)
