"""Training runs end to end: exact resume, crash-safe checkpoints, official format, many processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import read_state_dict
from eaglefinch.cli import main
from eaglefinch.train.binidx import BinidxWriter
from eaglefinch.train.checkpointing import latest_checkpoint
from eaglefinch.train.loop import TrainConfig, train
from eaglefinch.train.metrics import read_metrics

TINY = RWKVConfig("6.0", n_layer=2, n_embd=64, head_size=32, vocab_size=300)
TINY_ARGS = [
    "--arch",
    "finch",
    "--n-layer",
    "2",
    "--n-embd",
    "64",
    "--head-size",
    "32",
    "--vocab-size",
    "300",
]
RUN = {
    "ctx_len": 32,
    "batch_size": 2,
    "steps": 6,
    "lr": 3e-3,
    "lr_final": 3e-4,
    "warmup_steps": 2,
    "threads": 1,
    "progress": False,
    "plot": False,
}
RUN_ARGS = [
    "--ctx-len",
    "32",
    "--batch-size",
    "2",
    "--steps",
    "6",
    "--lr",
    "3e-3",
    "--lr-final",
    "3e-4",
    "--warmup-steps",
    "2",
    "--threads",
    "1",
    "--no-progress",
    "--no-plot",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """About 12k tokens of English as World single-byte ids (1 + byte), documents ending with 0."""
    text = "\n".join(
        f"And it came to pass on day {i}, that the word was spoken unto them." for i in range(180)
    )
    ids = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16) + 1
    prefix = tmp_path_factory.mktemp("corpus") / "kjv"
    with BinidxWriter(prefix) as writer:
        for start in range(0, len(ids), 700):
            writer.add_document(np.append(ids[start : start + 700], 0).astype(np.uint16))
    return str(prefix)


def run(corpus: str, out: Path, **changes):
    return train(TrainConfig(data=corpus, out=str(out), **{**RUN, **changes}), TINY)


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """Six steps without interruption (two micro-batches per step), checkpoints every two steps."""
    out = tmp_path_factory.mktemp("straight")
    run(corpus, out, grad_accum=2, save_every=2, keep=0)
    return out


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in read_state_dict(path).items()}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl") if r["kind"] == "train"}


def test_resume_is_bitwise_exact(corpus, straight, tmp_path):
    first = run(corpus, tmp_path, grad_accum=2, save_every=2, stop_at=3)
    assert first.step == 3 and latest_checkpoint(tmp_path / "checkpoints").step == 3
    second = run(corpus, tmp_path, grad_accum=2, save_every=2)
    assert second.step == 6
    assert_bitwise_equal(weights(straight / "model.pth"), weights(tmp_path / "model.pth"))
    assert losses(straight) == losses(tmp_path)  # steps 1-6, each exactly
    logged = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert logged == [1, 2, 3, 4, 5, 6]  # the resumed run continued the log, without repeats
    a = torch.load(latest_checkpoint(straight / "checkpoints").state_path, weights_only=True)
    b = torch.load(latest_checkpoint(tmp_path / "checkpoints").state_path, weights_only=True)
    assert a["samples"] == b["samples"] == 6 * 2 * 2
    for (ka, sa), (kb, sb) in zip(
        a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True
    ):
        assert ka == kb and all(torch.equal(sa[n], sb[n]) for n in sa)


def test_checkpoint_loads_in_the_official_rwkv_package(straight):
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    rwkv_model = pytest.importorskip("rwkv.model")
    from eaglefinch import load

    path = latest_checkpoint(straight / "checkpoints").model_path
    official = rwkv_model.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    tokens = [5, 70, 33, 101, 299, 1, 0, 42]
    theirs, _ = official.forward(tokens, None, full_output=True)
    with torch.no_grad():
        ours, _ = load(path)(torch.tensor([tokens]))
    assert (ours[0] - theirs).abs().max() / theirs.abs().max() < 1e-4
    assert (straight / "metrics.jsonl").exists() and not (straight / "loss.png").exists()


KILLER = textwrap.dedent("""
    import sys, time
    from eaglefinch.train import checkpointing
    point, marker = sys.argv[1], sys.argv[2]

    def stall():
        open(marker, "w").close()
        time.sleep(600)

    if point == "after-model":  # the new model file is written, the training state not yet
        original = checkpointing.save_state_dict
        def save_state_dict(state, path, *a, **k):
            original(state, path, *a, **k)
            if "step-00000004" in str(path):
                stall()
        checkpointing.save_state_dict = save_state_dict
    else:  # the new checkpoint folder is in place, latest.json not yet updated
        original = checkpointing._write_json
        def _write_json(path, data):
            if path.name == "latest.json" and data["step"] == 4:
                stall()
            original(path, data)
        checkpointing._write_json = _write_json
    from eaglefinch.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("point", ["after-model", "before-pointer"])
def test_kill_during_save_keeps_the_previous_checkpoint(corpus, straight, tmp_path, point):
    out, marker = tmp_path / "run", tmp_path / "saving"
    args = [
        "train",
        "--data",
        corpus,
        "--out",
        str(out),
        *TINY_ARGS,
        *RUN_ARGS,
        "--grad-accum",
        "2",
        "--save-every",
        "2",
        "--keep",
        "0",
    ]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLER, point, str(marker), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline, "the child never reached the save"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    latest = latest_checkpoint(out / "checkpoints")
    assert latest.step == 2  # still the complete checkpoint before the interrupted save
    assert_bitwise_equal(
        weights(latest.model_path),
        weights(latest_checkpoint(straight / "checkpoints").dir.parent / "step-00000002" / "model.pth"),
    )
    # A rerun resumes from step 2 and ends exactly where the uninterrupted run ended.
    assert main(args) == 0
    assert_bitwise_equal(weights(straight / "model.pth"), weights(out / "model.pth"))
    assert not list((out / "checkpoints").glob(".step-*"))  # leftovers of the killed save are gone
    logged = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert logged == [1, 2, 3, 4, 5, 6]  # steps the killed run logged after step 2 were dropped


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    exe = shutil.which("eaglefinch")
    if exe is None:
        pytest.skip("the eaglefinch console script is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "--no-python",
            exe,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(corpus, tmp_path, strategy):
    steps = ["--steps", "4"]
    one = tmp_path / "one"
    assert (
        main(
            ["train", "--data", corpus, "--out", str(one), *TINY_ARGS, *RUN_ARGS, *steps, "--batch-size", "4"]
        )
        == 0
    )
    two = tmp_path / "two"
    done = torchrun(
        [
            "train",
            "--data",
            corpus,
            "--out",
            str(two),
            *TINY_ARGS,
            *RUN_ARGS,
            *steps,
            "--batch-size",
            "2",
            "--strategy",
            strategy,
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    wa, wb = weights(one / "model.pth"), weights(two / "model.pth")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)
    meta = json.loads((two / "run.json").read_text())
    assert meta["processes"] == 2


def test_gradient_accumulation_matches_a_larger_batch(corpus, tmp_path):
    big = run(corpus, tmp_path / "big", batch_size=4, steps=3)
    accumulated = run(corpus, tmp_path / "acc", batch_size=2, grad_accum=2, steps=3)
    assert big.tokens == accumulated.tokens
    for key, value in weights(tmp_path / "big" / "model.pth").items():
        torch.testing.assert_close(weights(tmp_path / "acc" / "model.pth")[key], value, rtol=1e-4, atol=1e-5)


def test_clear_errors(corpus, straight, tmp_path, capsys):
    def error_of(args):
        assert main(["train", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        return err

    assert "no corpus" in error_of(
        [
            "--data",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "o"),
            "--preset",
            "finch-tiny",
            "--steps",
            "1",
        ]
    )
    assert "length" in error_of(["--data", corpus, "--out", str(tmp_path / "o"), "--preset", "finch-tiny"])
    # the straight run's folder holds a Finch L2-D64 checkpoint: resuming it as another shape is refused
    other = error_of(["--data", corpus, "--out", str(straight), "--preset", "finch-tiny", "--steps", "8"])
    assert "checkpoint" in other and "L2-D64" in other and "L2-D128" in other
    wrong = error_of(
        [
            "--data",
            corpus,
            "--out",
            str(tmp_path / "i"),
            "--init-from",
            str(straight / "model.pth"),
            "--preset",
            "eagle-tiny",
            "--steps",
            "1",
        ]
    )
    assert "Finch L2-D64" in wrong and "Eagle L2-D128" in wrong
    assert "vocabulary" in error_of(
        [
            "--data",
            corpus,
            "--out",
            str(tmp_path / "v"),
            *TINY_ARGS[:-1],
            "100",
            "--steps",
            "1",
            "--ctx-len",
            "32",
            "--threads",
            "1",
            "--no-progress",
        ]
    )


@pytest.mark.gpu
def test_bf16_training_on_a_gpu(corpus, tmp_path):
    result = run(corpus, tmp_path, device="cuda", precision="auto", steps=8, batch_size=4)
    assert result.loss < result.first_loss
    assert json.loads((tmp_path / "run.json").read_text())["train"]["precision"] == "auto"
    # the official-format weights it writes are float32, wherever they were trained
    assert all(v.dtype == torch.float32 for v in read_state_dict(tmp_path / "model.pth").values())
