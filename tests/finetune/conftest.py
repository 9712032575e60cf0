"""Fixtures for the fine-tuning tests: a tiny World-vocabulary checkpoint and small data files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import save_state_dict
from eaglefinch.testing import random_state_dict

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")

TINY = RWKVConfig("6.0", n_layer=2, n_embd=64, head_size=32, vocab_size=65536)
RUN = {
    "ctx_len": 48,
    "batch_size": 2,
    "steps": 6,
    "warmup_steps": 1,
    "weight_decay": 0.0,
    "threads": 1,
    "progress": False,
    "plot": False,
}
LEARNING_RATES = {
    "lora": {"lr": 5e-3, "lr_final": 5e-4},
    "state": {"lr": 1.0, "lr_final": 0.1},
    "full": {"lr": 1e-3, "lr_final": 1e-4},
}
CHATS = [
    [
        {"role": "user", "content": f"What is {i} plus one?"},
        {"role": "assistant", "content": f"It is {i + 1}."},
    ]
    for i in range(6)
] + [
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Which bird is larger, an eagle or a finch?"},
        {"role": "assistant", "content": "Eagle."},
        {"role": "user", "content": "And the smaller?"},
        {"role": "assistant", "content": "Finch."},
    ]
]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(name="write_jsonl", scope="session")
def write_jsonl_fixture():
    return write_jsonl


@pytest.fixture(scope="session")
def base_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.pth"
    save_state_dict(random_state_dict(TINY, seed=7), path)
    return path


@pytest.fixture(scope="session")
def bf16_base_path(tmp_path_factory) -> Path:
    """The tiny base in bfloat16, as released checkpoints are (its frozen weights stay 16-bit)."""
    import torch

    path = tmp_path_factory.mktemp("base_bf16") / "base.pth"
    save_state_dict(random_state_dict(TINY, seed=7, dtype=torch.bfloat16), path)
    return path


@pytest.fixture(scope="session")
def chat_path(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", [{"messages": m} for m in CHATS])


@pytest.fixture(scope="session")
def finetune(base_path, chat_path):
    """``finetune(method, out, **changes)``: a short run of the loop on the tiny base and chat file."""
    from eaglefinch.train.loop import TrainConfig, train

    def run(method: str, out, **changes):
        options = {**RUN, **LEARNING_RATES[method], **changes}
        options.setdefault("data", str(chat_path))
        options.setdefault("init_from", str(base_path))
        return train(TrainConfig(out=str(out), method=method, **options))

    return run
