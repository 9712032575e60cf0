"""Frozen weights kept in 16 bits: the same numbers as the float32 model, in less memory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import save_state_dict
from eaglefinch.errors import ConfigError
from eaglefinch.finetune.data import IGNORE
from eaglefinch.finetune.frozen import FrozenEmbedding, FrozenLinear, store_frozen
from eaglefinch.finetune.methods import adapt, store_frozen_weights
from eaglefinch.model.rwkv import RWKV
from eaglefinch.testing import random_state_dict
from eaglefinch.train.loop import LossModule, TrainConfig
from eaglefinch.train.metrics import read_metrics

TINY = RWKVConfig("6.0", n_layer=2, n_embd=64, head_size=32, vocab_size=65536)  # the base_path fixture's

TOKENS = torch.tensor([[33, 4017, 10, 0, 261, 59, 5000, 65000, 7, 300]])
TARGETS = torch.tensor([[4017, 10, 0, 261, 59, 5000, 65000, 7, 300, IGNORE]])


def bf16_model(seed: int = 7) -> RWKV:
    """A float32 model whose weights are those of a bfloat16 checkpoint (as released models are)."""
    model = RWKV(TINY, init=False)
    weights = random_state_dict(TINY, seed=seed, dtype=torch.bfloat16)
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model


def options(method: str) -> TrainConfig:
    return TrainConfig(data="x.jsonl", out="x", steps=1, init_from="x.pth", method=method, lora_rank=4)


def loss_and_grads(method: str, frozen: str, seed: int = 0):
    torch.manual_seed(seed)  # the LoRA A matrices
    adapted = adapt(bf16_model(), method, options(method))
    stored = store_frozen_weights(adapted, frozen)
    module = LossModule(adapted.model, 1e-4, adapted.initial_state)
    gen = torch.Generator().manual_seed(1)
    for param in module.parameters():
        if param.requires_grad:  # peft starts B at zero, the state at zero: give every trained tensor a value
            param.data.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    loss = module(TOKENS, TARGETS)
    loss.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    return stored, module, loss.detach(), grads


@pytest.mark.parametrize("method", ["lora", "state"])
def test_a_bf16_checkpoints_frozen_weights_compute_as_in_float32(method):
    stored, module, loss, grads = loss_and_grads(method, "auto")
    none, _, loss32, grads32 = loss_and_grads(method, "fp32")
    assert none == ""
    # embedding + 8 projections per layer (5 time-mix, 3 channel-mix); the head is left
    assert stored == f"{1 + 8 * TINY.n_layer} weights in bfloat16"
    assert loss == loss32
    assert grads.keys() == grads32.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads32[name], rtol=1e-6, atol=1e-9, msg=name)
    dtypes = {n: p.dtype for n, p in module.named_parameters()}
    assert dtypes[next(n for n in dtypes if n.endswith("emb.weight"))] == torch.bfloat16
    assert dtypes[next(n for n in dtypes if n.endswith("head.weight"))] == torch.float32
    assert all(dtypes[n] == torch.float32 for n in grads)  # what trains stays float32


def test_auto_stores_only_what_is_lossless():
    model = RWKV(TINY, init=False)
    model.load_state_dict(random_state_dict(TINY, seed=3))  # float32 values: not 16-bit numbers
    for p in model.parameters():
        p.requires_grad_(False)
    assert store_frozen(model, "auto") == {}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    key = model.blocks[0].att.key.weight.clone()
    counts = store_frozen(model, "fp16")  # asked for: rounds
    assert counts == {"float16": 1 + 8 * TINY.n_layer}
    assert isinstance(model.blocks[0].att.key, FrozenLinear) and isinstance(model.emb, FrozenEmbedding)
    assert torch.equal(model.blocks[0].att.key.weight, key.half())
    assert model.dtype == torch.float32 and model.zero_state().wkv.dtype == torch.float32


def test_trainable_weights_are_never_stored():
    model = bf16_model()
    model.blocks[0].att.key.weight.requires_grad_(False)  # only this one is frozen
    assert store_frozen(model, "auto") == {"bfloat16": 1}
    assert type(model.blocks[0].att.value) is torch.nn.Linear


def test_the_upcast_product_has_the_float32_gradient():
    weight = torch.randn(24, 16, dtype=torch.float64).half()
    frozen = FrozenLinear(16, 24, bias=False, device="meta")
    frozen.weight = torch.nn.Parameter(weight, requires_grad=False)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(frozen, (x,))
    reference = x @ weight.double().t()
    torch.testing.assert_close(frozen(x), reference, rtol=0, atol=0)
    (g,) = torch.autograd.grad(frozen(x).square().sum(), x)
    (g_ref,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=0)


def test_fsdp_refuses_an_explicit_16_bit_store_and_keeps_auto_in_float32():
    adapted = adapt(bf16_model(), "state", options("state"))
    with pytest.raises(ConfigError, match="fsdp"):
        store_frozen_weights(adapted, "bf16", sharded=True)
    assert store_frozen_weights(adapted, "auto", sharded=True) == ""
    with pytest.raises(ConfigError, match="frozen"):
        TrainConfig(data="x", out="x", steps=1, init_from="x.pth", method="lora", frozen_dtype="int8")


@pytest.mark.parametrize("method", ["lora", "state"])
def test_a_run_on_a_bf16_checkpoint_ends_as_with_float32_storage(method, finetune, tmp_path, caplog):
    base = tmp_path / "base.pth"
    save_state_dict(random_state_dict(TINY, seed=7, dtype=torch.bfloat16), base)
    with caplog.at_level("INFO", logger="eaglefinch.train.loop"):
        finetune(method, tmp_path / "kept", init_from=str(base), steps=3)
    assert "frozen weights stored as 17 weights in bfloat16" in caplog.text
    finetune(method, tmp_path / "wide", init_from=str(base), steps=3, frozen_dtype="fp32")
    losses = [
        [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
        for run in (tmp_path / "kept", tmp_path / "wide")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    result = {"lora": "adapter/adapter_model.safetensors", "state": "state.safetensors"}[method]
    a, b = load_file(tmp_path / "kept" / result), load_file(tmp_path / "wide" / result)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=key)


def test_the_cli_passes_frozen_dtype_to_the_run(bf16_base_path, chat_path, tmp_path, caplog):
    from eaglefinch.cli import main

    argv = ["finetune", "--model", str(bf16_base_path), "--data", str(chat_path), "--steps", "1"]
    argv += ["--ctx-len", "48", "--batch-size", "2", "--threads", "1", "--no-progress", "--no-plot"]
    with caplog.at_level("INFO", logger="eaglefinch.train.loop"):
        assert main([*argv, "--out", str(tmp_path / "a"), "--frozen-dtype", "fp32"]) == 0
    assert "frozen weights stored" not in caplog.text
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["train"]["frozen_dtype"] == "fp32"
    caplog.clear()
    with caplog.at_level("INFO", logger="eaglefinch.train.loop"):
        assert main([*argv, "--out", str(tmp_path / "b")]) == 0  # auto, the default
    assert "frozen weights stored as 17 weights in bfloat16" in caplog.text
