"""MQAR models: shapes, causality, scored-position logits, and a short run where Finch learns."""

from __future__ import annotations

import pytest
import torch

from eaglefinch.errors import ConfigError
from eaglefinch.experiments.mqar.data import IGNORE, generate
from eaglefinch.experiments.mqar.models import MQARModel, TimeMixV4, mamba_available, rwkv_head_size
from eaglefinch.experiments.mqar.train import Cell, TrainConfig, train_run
from eaglefinch.ops.wkv4_reference import wkv4_reference

MODELS = ["rwkv4", "eagle", "finch", "attention"]
MAMBA = pytest.param(
    "mamba", marks=pytest.mark.skipif(not mamba_available(), reason="needs eaglefinch[mamba]")
)


@pytest.mark.parametrize("name", [*MODELS, MAMBA])
def test_causal_and_scored_logits(name):
    """A later token leaves earlier hidden states alone; scored logits are the full logits at the labels."""
    torch.manual_seed(0)
    model = MQARModel(name, d_model=32, vocab_size=64, max_len=16).eval()
    data = generate(3, 16, 2, seed=0, vocab_size=64)
    with torch.no_grad():
        h = model.hidden(data.inputs)
        changed = data.inputs.clone()
        changed[:, 9] = (changed[:, 9] + 1) % 64
        h2 = model.hidden(changed)
        logits, targets = model.scored_logits(data.inputs, data.labels)
    assert h.shape == (3, 16, 32)
    assert torch.allclose(h[:, :9], h2[:, :9], atol=1e-5) and not torch.allclose(h[:, 9:], h2[:, 9:])
    mask = data.labels != IGNORE
    assert logits.shape == (int(mask.sum()), 64)
    assert torch.equal(targets, data.labels[mask])
    assert torch.allclose(logits, (h @ model.emb.weight.t())[mask], atol=1e-5)


def test_depths_and_head_sizes():
    assert len(MQARModel("attention", 32, 64, 16).blocks) == 2
    assert len(MQARModel("finch", 32, 64, 16).blocks) == 4
    assert [rwkv_head_size(d) for d in (64, 128, 256, 512)] == [16, 32, 64, 64]
    assert MQARModel("eagle", 64, 64, 16).blocks[0].mixer.mix.n_head == 4


def test_rwkv4_layer_matches_a_float64_token_loop():
    """The RWKV-4 time-mixing layer against the same formulas run token by token in float64."""
    torch.manual_seed(1)
    layer = TimeMixV4(8, layer_id=1, n_layer=3).double()
    with torch.no_grad():
        layer.output.weight.normal_()  # zero at init: make the output depend on the rest
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    sx = torch.cat([torch.zeros(2, 1, 8, dtype=torch.float64), x[:, :-1]], dim=1)
    mix = lambda m: x * m + sx * (1 - m)
    k, v = layer.key(mix(layer.time_mix_k)), layer.value(mix(layer.time_mix_v))
    wkv, _ = wkv4_reference(k, v, torch.exp(layer.time_decay), layer.time_first)
    expected = layer.output(torch.sigmoid(layer.receptance(mix(layer.time_mix_r))) * wkv)
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-9)


def test_unknown_model_is_one_line():
    with pytest.raises(ConfigError, match="unknown MQAR model"):
        MQARModel("hyena", 32, 64, 16)


def test_finch_learns_a_tiny_cell():
    """About a minute: Finch recalls well above chance on T = 16 with 2 pairs (vocabulary 64)."""
    config = TrainConfig(num_train=1024, num_test=256, epochs=12, batch_size=32, seed=0, vocab_size=64)
    record = train_run(Cell("finch", 16, 2, 32), lr=3e-3, config=config, progress=False)
    # chance is 1/32 (values are 32..63); copying a value from the context at random gives 1/2
    assert record["accuracy"] > 0.6, record
