"""Fold a LoRA run's adapters into its base checkpoint: an official-format file with no adapters.

The merge runs in float32 (W + scale * B @ A, by peft's ``merge_and_unload``) and only then casts
to the written dtype, so a half-precision base loses nothing beyond its own rounding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from eaglefinch import checkpoint
from eaglefinch.errors import CheckpointError
from eaglefinch.finetune import lora, methods


def _run_record(run: Path) -> dict | None:
    path = run / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["train"]["method"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{path} is not a fine-tuning run's record; give the adapter folder") from None
    return record


def find_adapter(run: str | os.PathLike) -> tuple[Path, dict | None]:
    """The adapter folder of ``run`` (a run folder or an adapter folder) and the run's record."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder")
    if (run / lora.ADAPTER_CONFIG).is_file():  # an adapter folder itself (ours or peft's)
        return run, _run_record(run.parent)
    record = _run_record(run)
    method = record["train"]["method"] if record else None
    if method == "state":
        raise CheckpointError(
            f"{run} is a --method state run: it has no adapters to merge; apply its "
            f"{methods.STATE_FILE} with `eaglefinch generate --load-state` instead"
        )
    if method == "full":
        raise CheckpointError(
            f"{run} is a --method full run: it has no adapters; its model.pth is the result"
        )
    folder = run / methods.ADAPTER_DIR
    if not (folder / lora.ADAPTER_CONFIG).is_file():
        raise CheckpointError(
            f"{run} has no adapters ({methods.ADAPTER_DIR}/{lora.ADAPTER_CONFIG}): merge needs a finished "
            "--method lora run"
        )
    return folder, record


def merge_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Write ``out``: the base of ``run`` with its adapters folded in (official key names)."""
    folder, record = find_adapter(run)
    base_path = model or (record["train"]["init_from"] if record else None)
    if base_path is None:
        raise CheckpointError(f"{folder} does not say which checkpoint it adapts: give the base with --model")
    if not Path(base_path).is_file():
        raise CheckpointError(f"{base_path}: the base checkpoint is missing; give it with --model")
    weights = checkpoint.read_state_dict(base_path)
    dtypes = {t.dtype for t in weights.values()}
    written = checkpoint.parse_dtype(dtype) or (dtypes.pop() if len(dtypes) == 1 else torch.float32)
    base = checkpoint.model_from_state_dict(weights, dtype=torch.float32)
    del weights
    if record is not None and record.get("base") and record["base"] != methods.base_identity(base):
        raise CheckpointError(
            f"{base_path} is not the checkpoint {folder} was trained on; give that one with --model"
        )
    merged = lora.merge_adapter(lora.load_adapter(base, folder))
    out = Path(out)
    metadata = {"format": "pt", "eaglefinch_config": json.dumps(merged.config.to_dict())}
    state = {k: v.to(written) for k, v in merged.state_dict().items()}  # one dtype, as released files are
    checkpoint.save_state_dict(state, out, metadata=metadata)
    return out
