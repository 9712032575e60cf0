"""State tuning: only the initial state trains; the state file steers the frozen model through generate."""

from __future__ import annotations

import json

import pytest
import torch

from eaglefinch import RWKVConfig, SamplingConfig, generate, load, load_state
from eaglefinch.checkpoint import model_from_state_dict, save_state_dict
from eaglefinch.cli import main
from eaglefinch.errors import StateError
from eaglefinch.finetune.data import IGNORE
from eaglefinch.finetune.state_tuning import InitialState
from eaglefinch.testing import random_state_dict
from eaglefinch.tokenizer import WorldTokenizer
from eaglefinch.train.loop import LossModule
from eaglefinch.train.metrics import read_metrics

QUESTION = [{"role": "user", "content": "What is the password?"}]
ANSWER = " Eagle and Finch."
# Wide enough that a state alone can steer a random model to one answer within a few dozen steps.
MEMORY = RWKVConfig("6.0", n_layer=4, n_embd=256, head_size=32, vocab_size=65536)


def test_only_the_state_changes(base_path):
    model = load(base_path, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initial = InitialState(model, tune_shift=True)
    module = LossModule(model, initial_state=initial)
    for p in model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.1)
    inputs = torch.tensor([[33, 4017, 10, 0, 261, 59]])
    targets = torch.tensor([[4017, 10, 0, 261, 59, IGNORE]])
    start = {n: p.detach().clone() for n, p in initial.named_parameters()}
    for _ in range(3):
        module(inputs, targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {
        "initial_state.wkv",
        "initial_state.att_shift",
        "initial_state.ffn_shift",
    }
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not torch.equal(start[n], p) for n, p in initial.named_parameters())


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, write_jsonl, finetune):
    folder = tmp_path_factory.mktemp("memorise")
    base = folder / "wide.pth"
    save_state_dict(random_state_dict(MEMORY, seed=3), base)
    data = write_jsonl(
        folder / "password.jsonl", [{"messages": QUESTION + [{"role": "assistant", "content": ANSWER}]}]
    )
    finetune(
        "state",
        folder / "run",
        data=str(data),
        init_from=str(base),
        batch_size=1,
        steps=80,
        warmup_steps=0,
        threads=2,
        l2wrap=0.0,
    )
    return base, folder / "run"


def test_state_tuning_memorises_a_fixed_answer(memorised):
    _, run = memorised
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 80
    assert losses[0] > 8 and losses[-1] < 0.25 * losses[0] and losses[-1] < 1.0
    saved = torch.load(next((run / "checkpoints").glob("step-*")) / "trainable.pt", weights_only=True)
    assert set(saved) == {"initial_state.wkv"}  # the shifts stay fixed unless --tune-shift


def test_the_saved_state_reproduces_the_answer_through_generate(memorised, tmp_path, capsys):
    base, run = memorised
    model, tokenizer = load(base), WorldTokenizer()
    prompt = "User: What is the password?\n\nAssistant:"
    greedy = SamplingConfig(temperature=0.0)
    tuned = generate(
        model,
        tokenizer,
        prompt,
        12,
        context=load_state(run / "state.safetensors", model),
        stop=["\n\n"],
        sampling=greedy,
    )
    plain = generate(model, tokenizer, prompt, 12, stop=["\n\n"], sampling=greedy)
    assert tuned == ANSWER and plain != ANSWER
    argv = [
        "generate",
        "--model",
        str(base),
        "--load-state",
        str(run / "state.safetensors"),
        "--prompt",
        prompt,
        "--stop",
        "\n\n",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out == ANSWER + "\n"


def test_a_state_file_for_another_model_is_refused(memorised, base_path, capsys):
    _, run = memorised
    with pytest.raises(StateError, match="Finch L4-D256"):
        load_state(run / "state.safetensors", load(base_path))
    same_shapes = model_from_state_dict(random_state_dict(MEMORY, seed=4))  # other weights, same sizes
    with pytest.raises(StateError):
        load_state(run / "state.safetensors", same_shapes)
    argv = [
        "generate",
        "--model",
        str(base_path),
        "--load-state",
        str(run / "state.safetensors"),
        "--prompt",
        "x",
    ]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("eaglefinch generate: error:") and "\n" not in error


def test_run_record_names_the_method_and_base(memorised):
    _, run = memorised
    record = json.loads((run / "run.json").read_text())
    assert record["train"]["method"] == "state" and len(record["base"]["fingerprint"]) == 64
