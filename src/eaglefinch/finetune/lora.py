"""LoRA on the time-mix and channel-mix projections, through the ``peft`` library.

``add_lora`` wraps an ``RWKV`` in a ``peft`` model whose only trainable tensors are the adapters;
``save_adapter`` writes them in peft's own layout (``adapter_config.json`` and
``adapter_model.safetensors``, loadable by ``peft.PeftModel.from_pretrained``), and
``merge_adapter`` folds them into the base weights, giving back a plain ``RWKV`` whose state dict
is an official checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from eaglefinch.errors import CheckpointError, ConfigError
from eaglefinch.model.rwkv import RWKV

# The projections of every block (the official module names under blocks.N.att / blocks.N.ffn).
TIME_MIX = ("att.receptance", "att.key", "att.value", "att.gate", "att.output")
CHANNEL_MIX = ("ffn.key", "ffn.value", "ffn.receptance")
DEFAULT_TARGETS = TIME_MIX + CHANNEL_MIX
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft library: pip install 'eaglefinch[finetune]'") from None
    return peft


def lora_config(rank: int = 16, alpha: float = 32.0, dropout: float = 0.0, targets=DEFAULT_TARGETS):
    """A ``peft.LoraConfig`` for an RWKV model, with the options checked."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"the LoRA rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ConfigError(f"the LoRA alpha must be > 0, got {alpha}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"the LoRA dropout must lie in [0, 1), got {dropout}")
    targets = tuple(targets)
    unknown = [t for t in targets if t not in DEFAULT_TARGETS]
    if not targets or unknown:
        raise ConfigError(
            f"unknown LoRA target {', '.join(unknown) or '(none)'}: choose from {', '.join(DEFAULT_TARGETS)}"
        )
    return _peft().LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))


def add_lora(model: RWKV, config) -> torch.nn.Module:
    """``model`` with LoRA adapters (a ``peft.PeftModel``); only the adapters require gradients.

    Eagle's and Finch's time-mix gate exists in both; RWKV-4 has no ``att.gate`` and is refused
    when it is a target.
    """
    peft = _peft()
    if model.config.version == "4" and "att.gate" in config.target_modules:
        config.target_modules = [t for t in config.target_modules if t != "att.gate"]
    return peft.get_peft_model(model, config)


def base_model(model: torch.nn.Module) -> RWKV:
    """The ``RWKV`` inside a peft model (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def adapter_tensors(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's saved names from a peft model's parameter names (``...lora_A.default.weight``)."""
    out = {}
    for name, tensor in named.items():
        if ".lora_" not in name:
            continue
        name = name[name.index("base_model.model.") :] if "base_model.model." in name else name
        out[name.replace(".default.", ".")] = tensor.detach().cpu().contiguous()
    if not out:
        raise ConfigError("no LoRA adapter tensors in this model")
    return out


def save_adapter(folder: str | os.PathLike, tensors: dict[str, torch.Tensor], config) -> Path:
    """Write an adapter folder atomically, in peft's ``save_pretrained`` layout."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save_file(adapter_tensors(tensors), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        data = config.to_dict()
        data["target_modules"] = sorted(data["target_modules"])
        data["inference_mode"] = True  # as peft's save_pretrained writes it
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_adapter(model: RWKV, folder: str | os.PathLike) -> torch.nn.Module:
    """``model`` with the adapters of ``folder`` (written by ``save_adapter`` or peft), frozen."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{folder} holds no LoRA adapter ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    peft = _peft()
    try:
        return peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(f"{folder}: the adapter does not fit this model ({error})") from None


def merge_adapter(model: torch.nn.Module) -> RWKV:
    """Fold the adapters into the weights and return the plain ``RWKV`` (official key names)."""
    with torch.no_grad():
        merged = model.merge_and_unload()
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged
