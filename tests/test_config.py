"""Config: presets against the paper's parameter counts, derived sizes, inference from shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from eaglefinch import RWKV, RWKVConfig
from eaglefinch.config import RELEASED_PARAMETERS
from eaglefinch.errors import CheckpointError, ConfigError
from eaglefinch.testing import random_state_dict


@pytest.mark.parametrize("name", list(RELEASED_PARAMETERS))
def test_released_preset_parameter_count_matches_paper(name):
    config = RWKVConfig.preset(name)
    with torch.device("meta"):
        model = RWKV(config)
    count = model.num_parameters()
    assert abs(count - RELEASED_PARAMETERS[name]) / RELEASED_PARAMETERS[name] < 0.01


@pytest.mark.parametrize("name", list(RELEASED_PARAMETERS))
def test_parameter_count_matches_closed_form(name):
    # SPEC: Eagle = 13 D^2 L + 14 D L + 4 D + 2 D V; Finch = 13 D^2 L + 464 D L + 4 D + 2 D V
    config = RWKVConfig.preset(name)
    D, L, V = config.n_embd, config.n_layer, config.vocab_size
    per_layer = 14 if config.version == "5.2" else 464
    with torch.device("meta"):
        count = RWKV(config).num_parameters()
    assert count == 13 * D * D * L + per_layer * D * L + 4 * D + 2 * D * V


def test_preset_sizes_are_the_papers():
    sizes = {
        name: (RWKVConfig.preset(name).n_layer, RWKVConfig.preset(name).n_embd)
        for name in RELEASED_PARAMETERS
    }
    assert sizes == {
        "eagle-0.4b": (24, 1024),
        "eagle-1.5b": (24, 2048),
        "eagle-3b": (32, 2560),
        "eagle-7b": (32, 4096),
        "finch-1.6b": (24, 2048),
        "finch-3b": (32, 2560),
    }


def test_derived_defaults():
    c = RWKVConfig("6.0", n_layer=2, n_embd=768)
    assert (c.dim_att, c.dim_ffn, c.n_head, c.tm_lora_rank, c.decay_lora_rank) == (768, 2688, 12, 32, 64)
    big = RWKVConfig("5.2", n_layer=2, n_embd=4096)
    assert (big.dim_ffn, big.tm_lora_rank, big.decay_lora_rank) == (14336, 64, 128)


def test_config_is_frozen():
    c = RWKVConfig.preset("finch-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"version": "4"}, "unknown RWKV version"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_embd": 100}, "multiple of head_size"),
        ({"dim_ffn": -1}, "dim_ffn"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RWKVConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="finch-3b"):
        RWKVConfig.preset("finch-9b")


@pytest.mark.parametrize(
    "config",
    [
        RWKVConfig("5.2", n_layer=3, n_embd=192, dim_ffn=320, vocab_size=777),
        RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=1000, tm_lora_rank=16, decay_lora_rank=24),
        RWKVConfig("6.0", n_layer=1, n_embd=256, head_size=32, dim_att=128, vocab_size=300, time_state=True),
    ],
    ids=["eagle", "finch-lora-ranks", "finch-dim-att-head32-timestate"],
)
def test_from_state_dict_round_trip(config):
    assert RWKVConfig.from_state_dict(random_state_dict(config)) == config


def test_from_state_dict_rejects_other_versions():
    sd = random_state_dict(RWKVConfig("5.2", n_layer=1, n_embd=64, vocab_size=50))
    sd["blocks.0.att.time_decay"] = torch.zeros(1, 1)  # RWKV-5.1: one decay per head
    with pytest.raises(CheckpointError, match="5.1"):
        RWKVConfig.from_state_dict(sd)
    rwkv4 = {"emb.weight": torch.zeros(50, 64), "blocks.0.att.time_first": torch.zeros(64)}
    with pytest.raises(CheckpointError, match="RWKV-4"):
        RWKVConfig.from_state_dict(rwkv4)
