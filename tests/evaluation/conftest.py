"""Small random checkpoints for the evaluation tests."""

from __future__ import annotations

import pytest
import torch

from eaglefinch import RWKVConfig, load
from eaglefinch.testing import random_state_dict

# World-vocabulary models, so that WorldTokenizer ids fit
FINCH = RWKVConfig("6.0", n_layer=2, n_embd=64, vocab_size=65536)
EAGLE = RWKVConfig("5.2", n_layer=2, n_embd=64, vocab_size=65536)


@pytest.fixture(scope="session")
def finch_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "finch.pth"
    torch.save(random_state_dict(FINCH, seed=11), path)
    return path


@pytest.fixture(scope="session")
def eagle_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "eagle.pth"
    torch.save(random_state_dict(EAGLE, seed=12), path)
    return path


@pytest.fixture(scope="session")
def finch(finch_path):
    return load(finch_path).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from eaglefinch import WorldTokenizer

    return WorldTokenizer()
