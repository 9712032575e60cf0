"""Fine-tuning runs end to end: exact resume after a kill, the CLI, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from eaglefinch.checkpoint import save_state_dict
from eaglefinch.cli import main
from eaglefinch.testing import random_state_dict
from eaglefinch.train.checkpointing import latest_checkpoint
from eaglefinch.train.metrics import read_metrics

RESULT = {"lora": "adapter/adapter_model.safetensors", "state": "state.safetensors"}

# Runs the CLI and freezes (to be killed) once the checkpoint of step 4 is complete.
STALL_AFTER_STEP_4 = textwrap.dedent("""
    import sys, time
    from eaglefinch.train import checkpointing
    original = checkpointing._write_json
    def _write_json(path, data):
        original(path, data)
        if path.name == "latest.json" and data["step"] == 4:
            open(sys.argv[1], "w").close()
            time.sleep(600)
    checkpointing._write_json = _write_json
    from eaglefinch.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def cli_args(method, base_path, chat_path, out) -> list[str]:
    lr = {"lora": ["--lr", "5e-3", "--lr-final", "5e-4"], "state": ["--lr", "1", "--lr-final", "0.1"]}[method]
    return [
        "finetune", "--model", str(base_path), "--data", str(chat_path), "--method", method,
        "--out", str(out), "--steps", "6", "--ctx-len", "48", "--batch-size", "2",
        "--warmup-steps", "1", "--threads", "1", "--save-every", "2", "--no-progress", "--no-plot", *lr,
    ]  # fmt: skip


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"}


@pytest.mark.parametrize("base", ["base_path", "bf16_base_path"])  # bf16: frozen weights stored in 16 bits
@pytest.mark.parametrize("method", ["lora", "state"])
def test_killed_and_resumed_run_ends_bit_identical(method, base, chat_path, tmp_path, request):
    base_path = request.getfixturevalue(base)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(cli_args(method, base_path, chat_path, straight)) == 0
    marker = tmp_path / "stalled"
    argv = [
        sys.executable,
        "-c",
        STALL_AFTER_STEP_4,
        str(marker),
        *cli_args(method, base_path, chat_path, resumed),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run did not reach its step-4 checkpoint"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert latest_checkpoint(resumed / "checkpoints").step == 4 and not (resumed / RESULT[method]).exists()
    assert main(cli_args(method, base_path, chat_path, resumed)) == 0
    a, b = load_file(straight / RESULT[method]), load_file(resumed / RESULT[method])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(straight) == losses(resumed) and sorted(losses(resumed)) == [1, 2, 3, 4, 5, 6]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error
    return error


def test_merge_without_adapters_says_so(finetune, tmp_path, capsys):
    finetune("state", tmp_path / "state", steps=1)
    error = one_line_error(
        capsys, ["finetune", "merge", str(tmp_path / "state"), "--out", str(tmp_path / "m.pth")]
    )
    assert "no adapters to merge" in error and "--load-state" in error
    finetune("full", tmp_path / "full", steps=1)
    error = one_line_error(
        capsys, ["finetune", "merge", str(tmp_path / "full"), "--out", str(tmp_path / "m.pth")]
    )
    assert "no adapters" in error
    (tmp_path / "empty").mkdir()
    error = one_line_error(
        capsys, ["finetune", "merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pth")]
    )
    assert "has no adapters" in error
    assert not (tmp_path / "m.pth").exists()


def other_weights(base_path, tmp_path):
    """A checkpoint with the base's sizes and other values."""
    from eaglefinch.checkpoint import infer_config, read_state_dict

    path = tmp_path / "other.pth"
    save_state_dict(random_state_dict(infer_config(read_state_dict(base_path)), seed=99), path)
    return path


def test_merge_refuses_a_base_the_adapters_were_not_trained_on(finetune, base_path, tmp_path, capsys):
    finetune("lora", tmp_path / "run", steps=1)
    other = other_weights(base_path, tmp_path)
    argv = [
        "finetune",
        "merge",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "m.pth"),
        "--model",
        str(other),
    ]
    assert "is not the checkpoint" in one_line_error(capsys, argv)


def test_resume_refuses_another_method_or_base(base_path, chat_path, tmp_path, capsys):
    out = tmp_path / "run"
    args = cli_args("lora", base_path, chat_path, out)
    assert main([*args, "--stop-at", "2"]) == 0
    capsys.readouterr()
    as_state = cli_args("state", base_path, chat_path, out)
    assert "--method lora run" in one_line_error(capsys, as_state)
    other = other_weights(base_path, tmp_path)
    with_other = [str(other) if a == str(base_path) else a for a in args]
    assert "fine-tuned from other weights" in one_line_error(capsys, with_other)


def test_cli_errors_are_one_line(base_path, chat_path, tmp_path, capsys, write_jsonl, monkeypatch):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "bot", "content": "x"}]}],
    )
    argv = cli_args("lora", base_path, bad, tmp_path / "run")
    assert f"{bad}:2: message 0 has role 'bot'" in one_line_error(capsys, argv)
    assert "give --out RUN" in one_line_error(capsys, ["finetune", "--data", str(chat_path), "--steps", "1"])
    monkeypatch.chdir(tmp_path)  # where there is no demo model to default to
    error = one_line_error(capsys, ["finetune", "--data", str(chat_path), "--out", "x", "--steps", "1"])
    assert "no --model given and no demo model" in error
    argv = cli_args("lora", base_path, chat_path, tmp_path / "run") + ["--lora-targets", "att.time_decay"]
    assert "unknown LoRA target att.time_decay" in one_line_error(capsys, argv)
    argv = cli_args("lora", base_path, chat_path, tmp_path / "run") + ["--lora-rank", "0"]
    assert "rank must be a positive integer" in one_line_error(capsys, argv)


def test_full_fine_tuning_writes_an_official_checkpoint(finetune, base_path, tmp_path):
    result = finetune("full", tmp_path, steps=2)
    assert result.model_path == tmp_path / "model.pth"
    tuned, base = torch.load(result.model_path, weights_only=True), torch.load(base_path, weights_only=True)
    assert tuned.keys() == base.keys() and not all(torch.equal(tuned[k], base[k]) for k in base)
    assert json.loads((tmp_path / "run.json").read_text())["train"]["method"] == "full"


@pytest.mark.parametrize(
    "method, strategy", [("lora", "ddp"), ("lora", "fsdp"), ("state", "ddp"), ("state", "fsdp")]
)
def test_two_processes_match_one_with_the_same_global_batch(method, strategy, base_path, chat_path, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*cli_args(method, base_path, chat_path, one), "--steps", "3", "--batch-size", "4"]) == 0
    script = tmp_path / "launch.py"
    script.write_text("import sys\nfrom eaglefinch.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    argv = [*cli_args(method, base_path, chat_path, two), "--steps", "3", "--strategy", strategy]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, str(script), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys() == {1, 2, 3}
    assert all(b[step] == pytest.approx(a[step], rel=1e-5) for step in a)
    wa, wb = load_file(one / RESULT[method]), load_file(two / RESULT[method])
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)


def test_without_model_and_data_it_tunes_the_demo_model_on_the_shipped_chats(
    base_path, tmp_path, monkeypatch, capsys
):
    import shutil

    from eaglefinch.demo import DEMO_MODEL, demo_chat_path

    monkeypatch.chdir(tmp_path)
    DEMO_MODEL.parent.mkdir(parents=True)
    shutil.copy(base_path, DEMO_MODEL)
    argv = ["finetune", "--method", "state", "--out", "tuned", "--steps", "1", "--ctx-len", "64"]
    assert main([*argv, "--no-progress", "--no-plot", "--threads", "1"]) == 0
    assert f"shipped demo chat file {demo_chat_path()}" in capsys.readouterr().out
    record = json.loads((tmp_path / "tuned" / "run.json").read_text())
    assert record["train"]["init_from"] == str(DEMO_MODEL) and record["train"]["data"] == str(
        demo_chat_path()
    )
