"""Fixtures for the generation tests: tiny random models, a byte-level tokenizer, the official package."""

from __future__ import annotations

import os

import pytest
import torch

from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import model_from_state_dict
from eaglefinch.testing import random_state_dict

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")

CONFIGS = {
    "finch": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=300),
    "eagle": RWKVConfig("5.2", n_layer=2, n_embd=128, vocab_size=300),
}


class ByteTokenizer:
    """World-compatible ids for bytes: id 0 is end of text, id b + 1 is byte b. A few ids above
    256 are multi-character tokens (digits, a space and a digit, a two-byte character), the rest
    decode to "<id>", so that decoding always has something to show."""

    WORDS = {257: "12", 258: " 1", 259: "é"}

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode_bytes(self, tokens) -> bytes:
        out = bytearray()
        for t in tokens:
            t = int(t)
            if 1 <= t <= 256:
                out.append(t - 1)
            elif t > 256:
                out += self.WORDS.get(t, f"<{t}>").encode()
        return bytes(out)


def make_model(config: RWKVConfig, seed: int = 1, dtype: torch.dtype = torch.float32):
    return model_from_state_dict(random_state_dict(config, seed=seed), dtype=dtype)


@pytest.fixture(scope="session")
def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="session")
def finch():
    return make_model(CONFIGS["finch"])


@pytest.fixture(scope="session")
def eagle():
    return make_model(CONFIGS["eagle"])


@pytest.fixture(scope="session", params=list(CONFIGS))
def model(request):
    return make_model(CONFIGS[request.param])


@pytest.fixture(scope="session")
def build_model():
    """``build_model(config, seed=1, dtype=torch.float32)``: a random model."""
    return make_model


@pytest.fixture(scope="session")
def configs() -> dict[str, RWKVConfig]:
    return CONFIGS


@pytest.fixture(scope="session")
def rwkv_package():
    """The official package's ``rwkv.model`` module (the oracle)."""
    return pytest.importorskip("rwkv.model", reason="the official rwkv package is a test dependency")


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |difference| / max |reference|"""
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


@pytest.fixture(scope="session")
def relative_error():
    return rel_err


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine a parallel region waits
    for the slowest thread: one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
