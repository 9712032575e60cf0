"""Small random checkpoints for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eaglefinch import RWKVConfig, load
from eaglefinch.testing import random_state_dict

# World-vocabulary models, so that WorldTokenizer ids fit
FINCH = RWKVConfig("6.0", n_layer=2, n_embd=64, vocab_size=65536)
EAGLE = RWKVConfig("5.2", n_layer=2, n_embd=64, vocab_size=65536)


@pytest.fixture(scope="session")
def checkpoint_file(tmp_path_factory):
    """``checkpoint_file(config, seed, name)``: a random official-format checkpoint saved as ``name``."""

    def write(config: RWKVConfig, seed: int, name: str) -> Path:
        path = tmp_path_factory.mktemp("ckpt") / name
        torch.save(random_state_dict(config, seed=seed), path)
        return path

    return write


@pytest.fixture(scope="session")
def finch_path(checkpoint_file):
    return checkpoint_file(FINCH, 11, "finch.pth")


@pytest.fixture(scope="session")
def eagle_path(checkpoint_file):
    return checkpoint_file(EAGLE, 12, "eagle.pth")


@pytest.fixture(scope="session")
def finch(finch_path):
    return load(finch_path).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from eaglefinch import WorldTokenizer

    return WorldTokenizer()
