"""`eaglefinch generate` and `eaglefinch chat` end to end, stdin piped, with a tiny random model."""

from __future__ import annotations

import io

import pytest
import torch

import eaglefinch
from eaglefinch.cli import main
from eaglefinch.generation import load_state
from eaglefinch.testing import random_state_dict

CLI_DEFAULTS = dict(top_p=0.85, alpha_presence=0.2, alpha_frequency=0.2, alpha_decay=0.996)
CHAT_DEFAULTS = dict(top_p=0.3, alpha_presence=0.0, alpha_frequency=1.0, alpha_decay=0.996)


@pytest.fixture
def checkpoint(configs, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(random_state_dict(configs["finch"], seed=3), path)
    return path


@pytest.fixture(autouse=True)
def byte_vocab(monkeypatch, byte_tokenizer):
    """The commands use the World tokenizer; the tiny test models use the byte-level test vocabulary."""
    monkeypatch.setattr("eaglefinch.cli.generate.load_tokenizer", lambda: byte_tokenizer)


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def greedy_argv(checkpoint, max_new_tokens: int, *options: str) -> list[str]:
    """``eaglefinch generate`` argv for greedy decoding of ``checkpoint``, then ``options``."""
    return [
        "generate",
        "--model",
        str(checkpoint),
        "--max-new-tokens",
        str(max_new_tokens),
        "--temperature",
        "0",
        *options,
    ]


def test_generate_prints_what_the_api_returns(checkpoint, capsys, byte_tokenizer, tmp_path):
    code, out, _ = run(greedy_argv(checkpoint, 12, "--prompt", "Hello"), capsys)
    model = eaglefinch.load(checkpoint)
    expected = eaglefinch.generate(model, byte_tokenizer, "Hello", 12, temperature=0, **CLI_DEFAULTS)
    assert code == 0 and out == expected + "\n"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Hello", encoding="utf-8")
    code, out_file, _ = run(greedy_argv(checkpoint, 12, "--prompt-file", str(prompt_file)), capsys)
    assert code == 0 and out_file == out


def test_seeded_sampling_and_bf16(checkpoint, capsys, byte_tokenizer):
    argv = [
        "generate",
        "--model",
        str(checkpoint),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "10",
        "--seed",
        "4",
        "--top-k",
        "20",
        "--dtype",
        "bf16",
    ]
    first, second = run(argv, capsys)[1], run(argv, capsys)[1]
    model = eaglefinch.load(checkpoint, dtype="bf16")
    expected = eaglefinch.generate(model, byte_tokenizer, "Hi", 10, seed=4, top_k=20, **CLI_DEFAULTS)
    assert first == second == expected + "\n"


def test_save_and_load_state(checkpoint, capsys, byte_tokenizer, tmp_path):
    state = tmp_path / "s.safetensors"
    code, first, _ = run(greedy_argv(checkpoint, 6, "--prompt", "Start", "--save-state", str(state)), capsys)
    assert code == 0
    model = eaglefinch.load(checkpoint)
    saved = load_state(state, model)
    assert saved.tokens[0][:5] == byte_tokenizer.encode("Start")
    code, more, _ = run(greedy_argv(checkpoint, 6, "--load-state", str(state), "--prompt", " then"), capsys)
    expected = eaglefinch.generate(
        model, byte_tokenizer, " then", 6, context=saved, temperature=0, **CLI_DEFAULTS
    )
    assert code == 0 and more == expected + "\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-p", "2"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--max-new-tokens", "-3"], "max-new-tokens"),
        (["--load-state", "nowhere.safetensors"], "no such state file"),
        (["--prompt-file", "nowhere.txt"], "no such prompt file"),
        (["--device", "tpu"], "device"),
    ],
    ids=["top-p", "temperature", "max-new-tokens", "load-state", "prompt-file", "device"],
)
def test_bad_options_are_one_line_errors(extra, message, checkpoint, capsys):
    argv = ["generate", "--model", str(checkpoint)] + extra
    if "--prompt-file" not in extra:
        argv += ["--prompt", "x"]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("eaglefinch generate: error:") and message in err


def test_missing_and_wrong_model_files(tmp_path, capsys):
    code, _, err = run(["generate", "--model", str(tmp_path / "none.pth"), "--prompt", "x"], capsys)
    assert code == 1 and err.count("\n") == 1 and "no such file" in err
    wrong = tmp_path / "notes.pth"
    wrong.write_text("not a checkpoint")
    code, _, err = run(["generate", "--model", str(wrong), "--prompt", "x"], capsys)
    assert code == 1 and err.count("\n") == 1 and "not a readable PyTorch checkpoint" in err
    code, _, err = run(["generate", "--model", str(wrong)], capsys)
    assert code == 1 and "--prompt" in err


def test_progress_bar_while_loading(checkpoint, capsys):
    eaglefinch.load(checkpoint, dtype="bf16", progress=True)
    assert "loading" in capsys.readouterr().err
    eaglefinch.load(checkpoint, dtype="bf16")
    assert capsys.readouterr().err == ""


def turn(user: str) -> str:
    return f"User: {user}\n\nAssistant:"


def test_chat_keeps_state_resets_and_saves(checkpoint, capsys, monkeypatch, byte_tokenizer, tmp_path):
    state = tmp_path / "chat.safetensors"
    script = f"Hi there\n/save {state}\n/reset\n/nonsense\nBye\n/quit\nnever read\n"
    argv = [
        "chat",
        "--model",
        str(checkpoint),
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
        "--system",
        "You are a bird.",
    ]
    code, out, err = run(argv, capsys, stdin=script, monkeypatch=monkeypatch)
    assert code == 0
    model = eaglefinch.load(checkpoint)
    system = eaglefinch.prefill(model, byte_tokenizer.encode("You are a bird.\n\n"))
    kwargs = dict(temperature=0, stop=["\n\n", "\nUser:"], **CHAT_DEFAULTS)
    first = eaglefinch.generate(model, byte_tokenizer, turn("Hi there"), 10, context=system, **kwargs)
    second = eaglefinch.generate(
        model, byte_tokenizer, turn("Bye"), 10, context=system, **kwargs
    )  # after /reset
    assert out.startswith(f"Assistant:{first}\n\n(saved ")
    assert "unknown command /nonsense" in out
    assert out.endswith(f"Assistant:{second}\n\n")
    saved = load_state(state, model).tokens[0]
    expected_start = byte_tokenizer.encode("You are a bird.\n\n" + turn("Hi there"))
    assert saved[: len(expected_start)] == expected_start
    assert saved[-2:] == byte_tokenizer.encode("\n\n")


def test_chat_continues_a_saved_conversation(checkpoint, capsys, monkeypatch, byte_tokenizer, tmp_path):
    state = tmp_path / "chat.safetensors"
    argv = ["chat", "--model", str(checkpoint), "--temperature", "0", "--max-new-tokens", "8"]
    run(argv, capsys, stdin=f"One\n/save {state}\n", monkeypatch=monkeypatch)
    code, resumed, _ = run(
        argv + ["--load-state", str(state)], capsys, stdin="Two\n", monkeypatch=monkeypatch
    )
    code2, straight, _ = run(argv, capsys, stdin="One\nTwo\n", monkeypatch=monkeypatch)
    assert code == code2 == 0
    assert straight.endswith(resumed) and resumed.startswith("Assistant:")


def test_chat_bad_command_argument_does_not_end_the_chat(checkpoint, capsys, monkeypatch):
    argv = ["chat", "--model", str(checkpoint), "--temperature", "0", "--max-new-tokens", "4"]
    code, out, err = run(
        argv, capsys, stdin="/load nowhere.safetensors\n/save\nHello\n", monkeypatch=monkeypatch
    )
    assert code == 0
    assert "no such state file" in err and "needs a file name" in err
    assert out.startswith("Assistant:")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_generate_on_gpu(dtype, checkpoint, capsys, byte_tokenizer):
    code, out, err = run(
        greedy_argv(checkpoint, 8, "--prompt", "Hello", "--device", "cuda", "--dtype", dtype), capsys
    )
    model = eaglefinch.load(checkpoint, dtype=dtype, device="cuda")
    expected = eaglefinch.generate(model, byte_tokenizer, "Hello", 8, temperature=0, **CLI_DEFAULTS)
    assert code == 0 and out == expected + "\n", err


def test_unknown_kernel_choice_is_a_one_line_error(checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("EAGLEFINCH_KERNEL", "cuda")
    code, out, err = run(greedy_argv(checkpoint, 2, "--prompt", "ab"), capsys)
    assert code == 1 and err.count("\n") == 1
    assert "EAGLEFINCH_KERNEL='cuda' is not a kernel choice: use one of auto, torch, triton" in err
