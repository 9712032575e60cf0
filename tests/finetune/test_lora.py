"""LoRA through peft: what trains, the adapter folder, merging into an official checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from eaglefinch import load
from eaglefinch.cli import main
from eaglefinch.finetune import lora
from eaglefinch.finetune.data import IGNORE
from eaglefinch.finetune.methods import adapt
from eaglefinch.train.loop import LossModule, TrainConfig

TOKENS = [[33, 4017, 10, 0, 261, 59, 5000, 65000]]


@pytest.fixture(scope="module")
def trained(finetune, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    finetune("lora", out, save_every=2)
    return out


def adapted_model(base_path, adapter):
    return lora.load_adapter(load(base_path, dtype=torch.float32), adapter)


def test_only_the_adapters_receive_gradients(base_path):
    base = load(base_path, dtype=torch.float32)
    config = TrainConfig(data="x.jsonl", out="x", steps=1, init_from="x.pth", method="lora", lora_rank=4)
    module = LossModule(adapt(base, "lora", config).model)
    for name, param in module.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (the adapted model equals the base); give it a value
            torch.nn.init.normal_(param, std=0.02)
    inputs = torch.tensor(TOKENS)
    targets = torch.tensor([TOKENS[0][1:] + [IGNORE]])
    module(inputs, targets).backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert with_grad == trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.split(".lora_")[0].split("blocks.")[1].split(".", 1)[1] for n in trainable}
    assert adapted == set(lora.DEFAULT_TARGETS)  # every time-mix and channel-mix projection
    assert len(trainable) == 2 * len(lora.DEFAULT_TARGETS) * base.config.n_layer
    assert all(module.get_parameter(n).grad.abs().sum() > 0 for n in trainable)


def test_the_run_writes_a_peft_adapter_and_leaves_the_base_untouched(trained, base_path):
    folder = trained / "adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    peft = pytest.importorskip("peft")
    # peft's own loader reads it, and the adapters moved away from peft's zero start
    model = peft.PeftModel.from_pretrained(load(base_path, dtype=torch.float32), str(folder))
    b_norm = sum(p.norm() for n, p in model.named_parameters() if "lora_B" in n)
    assert b_norm > 0
    base = load(base_path, dtype=torch.float32)
    with torch.no_grad():
        plain = base(torch.tensor(TOKENS))[0]
        adapted = model(torch.tensor(TOKENS))[0]
    assert not torch.allclose(plain, adapted)
    (checkpoint,) = [p for p in (trained / "checkpoints").iterdir() if p.name == "step-00000006"]
    saved = torch.load(checkpoint / "trainable.pt", weights_only=True)
    assert saved and all(".lora_" in k for k in saved)  # checkpoints hold only the adapters


def test_merged_checkpoint_equals_the_adapted_model_and_loads_in_rwkv(trained, base_path, tmp_path, capsys):
    merged_path = tmp_path / "merged.pth"
    assert main(["finetune", "merge", str(trained), "--out", str(merged_path)]) == 0
    assert "merged checkpoint" in capsys.readouterr().out
    weights = torch.load(merged_path, weights_only=True)
    assert not any("lora" in k for k in weights)
    assert set(weights) == set(load(base_path).state_dict())  # the official keys, no more
    inputs = torch.tensor(TOKENS)
    with torch.no_grad():
        adapted = adapted_model(base_path, trained / "adapter")(inputs)[0][0]
        merged = load(merged_path)(inputs)[0][0]
    assert ((merged - adapted).abs().max() / adapted.abs().max()).item() < 1e-5
    rwkv_model = pytest.importorskip("rwkv.model")
    official = rwkv_model.RWKV(model=str(merged_path), strategy="cpu fp32", verbose=False)
    theirs, _ = official.forward(TOKENS[0], None, full_output=True)
    assert ((theirs - adapted).abs().max() / adapted.abs().max()).item() < 1e-4


def test_merge_writes_the_requested_dtype(trained, tmp_path):
    path = tmp_path / "merged.safetensors"
    assert main(["finetune", "merge", str(trained / "adapter"), "--out", str(path), "--dtype", "bf16"]) == 0
    model = load(path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_lora_options_reach_peft(finetune, tmp_path):
    finetune("lora", tmp_path, steps=1, lora_rank=4, lora_alpha=8, lora_targets=("att.key", "ffn.value"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 8, ["att.key", "ffn.value"])
