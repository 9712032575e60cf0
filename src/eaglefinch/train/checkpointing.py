"""Training checkpoints: the model as an official ``.pth`` plus the state to resume exactly.

Layout under a run's folder::

    checkpoints/step-00000200/model.pth     the weights, official RWKV-LM keys (loads in the rwkv package)
    checkpoints/step-00000200/state.pt      optimiser, schedule, step, data position, RNG states
    checkpoints/step-00000200/meta.json     step, tokens, loss, config (written last)
    checkpoints/latest.json                 {"step": 200, "dir": "step-00000200"}

A checkpoint is written in full into a hidden temporary folder, flushed to disk, and renamed into
place in one step; only then does ``latest.json`` (replaced atomically) point at it. A crash or
kill at any moment therefore leaves ``latest.json`` naming a complete checkpoint: the new one or
the one before.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eaglefinch.checkpoint import read_state_dict, save_state_dict
from eaglefinch.errors import CheckpointError

STATE_FORMAT = "eaglefinch-train-state"
STATE_VERSION = 1
LATEST = "latest.json"


def rng_state() -> dict:
    """Every random generator a run may touch (torch CPU and CUDA, numpy's global one, Python's)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class Checkpoint:
    """A complete checkpoint on disk."""

    dir: Path
    step: int
    weights_file: str = "model.pth"  # or "trainable.pt": the trained tensors of a LoRA / state run

    @property
    def model_path(self) -> Path:
        return self.dir / "model.pth"

    @property
    def method(self) -> str:
        return self.meta().get("method", "full")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        path = self.dir / self.weights_file
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError) as error:
            raise CheckpointError(f"{path} is not readable: {error}") from None
        if not isinstance(tensors, dict):
            raise CheckpointError(f"{path} is not a dict of trained tensors")
        return tensors

    @property
    def state_path(self) -> Path:
        return self.dir / "state.pt"

    def meta(self) -> dict:
        return json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        return read_state_dict(self.model_path)

    def train_state(self) -> dict:
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError, ValueError) as error:
            raise CheckpointError(f"{self.state_path} is not a readable training state: {error}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.state_path} is not an eaglefinch training state")
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"{self.state_path}: training-state version {state.get('version')} is not supported"
            )
        return state


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    train_state: dict,
    meta: dict,
    *,
    keep: int = 2,
    weights_file: str = "model.pth",
) -> Checkpoint:
    """Write checkpoint ``step`` under ``folder`` atomically and point ``latest.json`` at it.

    ``keep`` most recent checkpoints are kept (0 keeps all).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = folder / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    try:
        if weights_file == "model.pth":
            save_state_dict(model_state, tmp / weights_file)
        else:
            torch.save(model_state, tmp / weights_file)
        torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **train_state}, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1), encoding="utf-8")
        for file in tmp.iterdir():
            _fsync_file(file)
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of this step from an earlier, abandoned attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json(folder / LATEST, {"step": step, "dir": name, "weights": weights_file})
    _fsync_dir(folder)
    _prune(folder, keep, current=name)
    return Checkpoint(final, step, weights_file)


def _prune(folder: Path, keep: int, current: str) -> None:
    """Drop old checkpoints beyond ``keep`` and leftovers of interrupted saves."""
    for stale in folder.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep <= 0:
        return
    # Only checkpoints up to the current one count: later steps in the folder belong to an
    # abandoned run (a restart with resume off) and are left for the user to judge.
    done = sorted(p for p in folder.glob("step-*") if p.is_dir() and p.name <= current)
    for old in done[: max(len(done) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint ``latest.json`` names, or None when the folder has none."""
    folder = Path(folder)
    pointer = folder / LATEST
    if not pointer.exists():
        return None
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
        checkpoint = Checkpoint(folder / data["dir"], int(data["step"]), data.get("weights", "model.pth"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{pointer} is unreadable; delete it to start over") from None
    for needed in (checkpoint.weights_file, "state.pt", "meta.json"):
        if not (checkpoint.dir / needed).is_file():
            raise CheckpointError(f"{pointer} names {checkpoint.dir}, which lacks {needed}")
    return checkpoint
