"""Parity with the official `rwkv` package (the oracle) on random official-format checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")
rwkv_model = pytest.importorskip("rwkv.model", reason="the official rwkv package is a test dependency")

from eaglefinch import RWKVConfig, load  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

CASES = {
    "eagle-L2-D128-V1000": RWKVConfig("5.2", n_layer=2, n_embd=128, vocab_size=1000),
    "eagle-L3-D192-F320-V777": RWKVConfig("5.2", n_layer=3, n_embd=192, dim_ffn=320, vocab_size=777),
    "finch-L2-D128-V1000": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=1000),
    "finch-L3-D256-V2048-r16": RWKVConfig(
        "6.0", n_layer=3, n_embd=256, vocab_size=2048, tm_lora_rank=16, decay_lora_rank=24
    ),
    "finch-L2-D128-timestate": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=500, time_state=True),
}


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |difference| / max |reference|"""
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


@pytest.fixture(params=list(CASES), scope="module")
def pair(request, tmp_path_factory):
    config = CASES[request.param]
    path = tmp_path_factory.mktemp("parity") / "model.pth"
    torch.save(random_state_dict(config, seed=1), path)
    official = rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    ours = load(path)
    return config, ours, official


def official_state_parts(state, config):
    L = config.n_layer
    return (
        torch.stack([state[3 * i] for i in range(L)]),
        torch.stack([state[3 * i + 1] for i in range(L)]),
        torch.stack([state[3 * i + 2] for i in range(L)]),
    )


def test_sequence_logits_and_state_match(pair):
    config, ours, official = pair
    tokens = torch.randint(0, config.vocab_size, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    theirs, their_state = official.forward(tokens, None, full_output=True)
    with torch.no_grad():
        logits, state = ours(torch.tensor([tokens]))
    assert rel_err(logits[0], theirs) < 1e-4
    for ours_part, their_part in zip(
        (state.att_shift[:, 0], state.wkv[:, 0], state.ffn_shift[:, 0]),
        official_state_parts(their_state, config),
        strict=True,
    ):
        assert rel_err(ours_part, their_part) < 1e-4


def test_token_by_token_matches(pair):
    config, ours, official = pair
    tokens = torch.randint(0, config.vocab_size, (12,), generator=torch.Generator().manual_seed(4)).tolist()
    their_state, state = None, None
    for token in tokens:
        theirs, their_state = official.forward([token], their_state)
        with torch.no_grad():
            logits, state = ours(torch.tensor([[token]]), state)
        assert rel_err(logits[0, -1], theirs) < 1e-4
    wkv = official_state_parts(their_state, config)[1]
    assert rel_err(state.wkv[:, 0], wkv) < 1e-4
