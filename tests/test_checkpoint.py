"""Checkpoint reading and writing: formats, dtypes, bit-exact round trips, and clear errors for bad files."""

from __future__ import annotations

import pytest
import torch

from eaglefinch import RWKVConfig, load, save
from eaglefinch.checkpoint import read_state_dict, save_state_dict
from eaglefinch.errors import CheckpointError
from eaglefinch.testing import random_state_dict

FINCH = RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=300)
EAGLE = RWKVConfig("5.2", n_layer=2, n_embd=128, vocab_size=300)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config", [EAGLE, FINCH], ids=["eagle", "finch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_then_save_is_bit_exact(tmp_path, config, dtype, suffix):
    sd = random_state_dict(config, seed=2, dtype=dtype)
    source = tmp_path / f"in{suffix}"
    save_state_dict(sd, source)
    model = load(source, dtype=dtype)
    assert model.config == config
    for out_suffix in (".pth", ".safetensors"):
        out = tmp_path / f"out{out_suffix}"
        save(model, out)
        assert same(read_state_dict(out), sd)


def test_default_dtype_keeps_bf16_and_widens_fp16_on_cpu(tmp_path):
    for dtype, expected in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)):
        path = tmp_path / "m.pth"
        torch.save(random_state_dict(FINCH, dtype=dtype), path)
        assert load(path).emb.weight.dtype == expected


def test_cast_keeps_decay_and_bonus_in_float32(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(random_state_dict(FINCH), path)
    model = load(path, dtype="bf16")
    att = model.blocks[0].att
    assert att.key.weight.dtype == torch.bfloat16
    assert att.time_decay.dtype == torch.float32 and att.time_faaaa.dtype == torch.float32


def test_loaded_model_matches_in_memory_model(tmp_path):
    path = tmp_path / "m.pth"
    sd = random_state_dict(FINCH, seed=5)
    torch.save(sd, path)
    from eaglefinch import RWKV

    reference = RWKV(FINCH)
    reference.load_state_dict(sd)
    tokens = torch.randint(0, FINCH.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(load(path)(tokens)[0], reference(tokens)[0])


def test_lightning_style_and_ddp_prefixed_state_dicts_load(tmp_path):
    sd = random_state_dict(EAGLE)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert load(path).config == EAGLE


# --- bad input: one clear line ---------------------------------------------------------------------


def expect_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.pth", "no such file")


def test_directory(tmp_path):
    expect_error(tmp_path, "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    expect_error(path, "empty")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "text.pth"
    path.write_text("hello, this is not a checkpoint\n" * 10)
    expect_error(path, "not a readable PyTorch checkpoint")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    save_state_dict(random_state_dict(FINCH), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated or corrupt")


def test_corrupt_safetensors_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_state_dict(random_state_dict(FINCH), path)
    data = bytearray(path.read_bytes())
    data[10:30] = b"\xff" * 20
    path.write_bytes(bytes(data))
    expect_error(path, "truncated or corrupt")


def test_missing_key(tmp_path):
    sd = random_state_dict(FINCH)
    del sd["blocks.1.ffn.value.weight"]
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    expect_error(path, "missing 1 key")


def test_unknown_key(tmp_path):
    sd = random_state_dict(FINCH)
    sd["blocks.0.att.mystery"] = torch.zeros(3)
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    expect_error(path, "does not use")


def test_inconsistent_shape(tmp_path):
    sd = random_state_dict(FINCH)
    sd["blocks.1.att.value.weight"] = torch.zeros(128, 64)
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    expect_error(path, "inconsistent shapes")


def test_other_rwkv_version_is_named(tmp_path):
    path = tmp_path / "rwkv4.pth"
    torch.save(
        {
            "emb.weight": torch.zeros(10, 8),
            "blocks.0.att.time_first": torch.zeros(8),
            "blocks.0.att.time_decay": torch.zeros(8),
        },
        path,
    )
    expect_error(path, "RWKV-4")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    expect_error(path, "does not hold a state dict")


def test_unknown_suffix_on_save(tmp_path):
    from eaglefinch import RWKV

    with pytest.raises(CheckpointError, match="suffix"):
        save(RWKV(FINCH), tmp_path / "m.ckpt")


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    from eaglefinch import RWKV

    path = tmp_path / "m.pth"
    save(RWKV(FINCH), path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError):
        save(RWKV(FINCH), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temporary file left behind
