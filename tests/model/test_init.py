"""The initialisation against the formulas of the official trainer (RWKV-LM RWKV-v5/src/model.py, x052/x060).

Every expected value is computed here from the formulas, element by element in Python floats, as
the trainer writes them; nothing is taken from ``eaglefinch.model.init``.
"""

from __future__ import annotations

import math

import pytest
import torch

from eaglefinch import RWKV, RWKVConfig

CASES = {
    "eagle-L3-D128-V1000": RWKVConfig("5.2", n_layer=3, n_embd=128, vocab_size=1000),
    "finch-L3-D128-V1000": RWKVConfig("6.0", n_layer=3, n_embd=128, vocab_size=1000),
    "finch-L4-D192-V100": RWKVConfig("6.0", n_layer=4, n_embd=192, vocab_size=100),  # V < C: head gain 0.5
}


@pytest.fixture(params=list(CASES), scope="module")
def model(request) -> RWKV:
    torch.manual_seed(0)
    return RWKV(CASES[request.param])


def ratios(layer: int, n_layer: int) -> tuple[float, float]:
    return layer / (n_layer - 1), 1.0 - layer / n_layer


def ddd(C: int) -> list[float]:
    return [i / C for i in range(C)]


def assert_values(param: torch.Tensor, expected: list[float]) -> None:
    got = param.detach().double().flatten()
    want = torch.tensor(expected, dtype=torch.float64)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def assert_orthogonal(weight: torch.Tensor, gain: float) -> None:
    """W has orthonormal rows or columns (whichever are fewer), scaled by ``gain``."""
    w = weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    torch.testing.assert_close(gram, gain**2 * eye, rtol=0, atol=1e-4 * gain**2)


def test_time_decay_and_bonus(model):
    c = model.config
    L, A = c.n_layer, c.dim_att
    for i, block in enumerate(model.blocks):
        r0, _ = ratios(i, L)
        decay = [-6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r0) for n in range(A)]
        bonus = [r0 * (1 - n / (A - 1)) + ((n + 1) % 3 - 1) * 0.1 for n in range(A)]
        assert_values(block.att.time_decay, decay)
        assert_values(block.att.time_faaaa, bonus)


def test_token_shift_mixes(model):
    c = model.config
    L, C = c.n_layer, c.n_embd
    d = ddd(C)
    for i, block in enumerate(model.blocks):
        r0, r1 = ratios(i, L)
        base = [x**r1 for x in d]
        half = [x ** (0.5 * r1) for x in d]
        with_v = [x**r1 + 0.3 * r0 for x in d]
        att, ffn = block.att, block.ffn
        if c.version == "5.2":
            expected = {
                att.time_mix_k: base,
                att.time_mix_v: with_v,
                att.time_mix_r: half,
                att.time_mix_g: half,
                ffn.time_mix_k: base,
                ffn.time_mix_r: base,
            }
        else:

            def comp(xs):
                return [1 - x for x in xs]

            expected = {
                att.time_maa_x: comp(base),
                att.time_maa_w: comp(base),
                att.time_maa_k: comp(base),
                att.time_maa_v: comp(with_v),
                att.time_maa_r: comp(half),
                att.time_maa_g: comp(half),
                ffn.time_maa_k: comp(base),
                ffn.time_maa_r: comp(base),
            }
        for param, values in expected.items():
            assert_values(param, values)


@pytest.mark.parametrize("case", [name for name, config in CASES.items() if config.version == "6.0"])
def test_finch_lora_zero_then_small_uniform(case):
    torch.manual_seed(0)
    model = RWKV(CASES[case])
    for block in model.blocks:
        att = block.att
        for zero in (att.time_maa_w1, att.time_decay_w1):
            assert torch.count_nonzero(zero) == 0
        for small in (att.time_maa_w2, att.time_decay_w2):
            assert small.abs().max() <= 0.01
            # uniform(-0.01, 0.01) has standard deviation 0.01 / sqrt(3)
            assert small.std().item() == pytest.approx(0.01 / math.sqrt(3), rel=0.1)


def test_embedding_small_uniform(model):
    emb = model.emb.weight
    assert emb.abs().max() <= 1e-4
    assert emb.std().item() == pytest.approx(1e-4 / math.sqrt(3), rel=0.05)


def test_head_orthogonal_with_vocab_gain(model):
    V, C = model.config.vocab_size, model.config.n_embd
    gain = 0.5 * math.sqrt(V / C) if V > C else 0.5
    assert_orthogonal(model.head.weight, gain)


def test_matrices(model):
    zero = (".att.output.", ".ffn.value.", ".ffn.receptance.")
    small = (".att.key.", ".att.gate.")
    seen = {"zero": 0, "small": 0, "plain": 0}
    for name, param in model.named_parameters():
        if not name.startswith("blocks.") or not name.endswith(".weight") or param.dim() != 2:
            continue
        if any(tag in name for tag in zero):
            assert torch.count_nonzero(param) == 0, name
            seen["zero"] += 1
        elif any(tag in name for tag in small):
            assert_orthogonal(param, 0.1)
            seen["small"] += 1
        else:  # att.receptance, att.value, ffn.key: orthogonal with gain 1 (ffn.key is F x C, F > C)
            assert_orthogonal(param, 1.0)
            seen["plain"] += 1
    L = model.config.n_layer
    assert seen == {"zero": 3 * L, "small": 2 * L, "plain": 3 * L}


def test_norms(model):
    L = model.config.n_layer
    for i, block in enumerate(model.blocks):
        assert_values(block.att.ln_x.weight, [((1 + i) / L) ** 0.7] * model.config.dim_att)
        assert torch.count_nonzero(block.att.ln_x.bias) == 0
        norms = [block.ln1, block.ln2] + ([block.ln0] if i == 0 else [])
        for norm in norms:
            assert torch.all(norm.weight == 1) and torch.count_nonzero(norm.bias) == 0
    assert torch.all(model.ln_out.weight == 1) and torch.count_nonzero(model.ln_out.bias) == 0


def test_generator_makes_init_reproducible():
    from eaglefinch.model.init import init_weights

    config = CASES["finch-L3-D128-V1000"]
    a, b = RWKV(config, init=False), RWKV(config, init=False)
    init_weights(a, torch.Generator().manual_seed(7))
    init_weights(b, torch.Generator().manual_seed(7))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
