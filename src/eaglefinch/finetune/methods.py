"""What a fine-tuning run trains, and what it leaves behind, for each ``--method``.

* ``full``: every weight, the official parameter groups; the run ends with ``model.pth``.
* ``lora``: peft adapters on the projections (``lora``); the run ends with ``adapter/``.
* ``state``: the initial state (``state_tuning``); the run ends with ``state.safetensors``.

For ``lora`` and ``state`` a checkpoint holds only the trainable tensors (``trainable.pt``) and the
base checkpoint's fingerprint; resuming rebuilds the model from the base and checks that it is
the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eaglefinch.errors import CheckpointError, ConfigError
from eaglefinch.finetune import lora as lora_lib
from eaglefinch.finetune.frozen import store_frozen
from eaglefinch.finetune.state_tuning import NAMES, InitialState, save_tuned_state
from eaglefinch.generation.states import weight_fingerprint
from eaglefinch.model.rwkv import RWKV

ADAPTER_DIR = "adapter"
STATE_FILE = "state.safetensors"
TRAINABLE_FILE = "trainable.pt"


@dataclass
class Adapted:
    """The pieces of a ``LossModule`` for one method."""

    base: RWKV  # the RWKV whose weights are (all or partly) frozen
    model: nn.Module  # what runs the tokens: the base, or a peft model around it
    initial_state: InitialState | None
    lora_config: object | None  # a peft.LoraConfig for lora
    fingerprint: dict | None = None  # state: the base's weight fingerprint, taken before any sharding


def adapt(base: RWKV, method: str, config) -> Adapted:
    """Freeze and wrap ``base`` for ``method`` (``config``: a TrainConfig)."""
    if method == "full":
        return Adapted(base, base, None, None)
    if base.config.version == "4" and method == "state":
        raise ConfigError("state tuning needs an Eagle or Finch model (RWKV-4 has no matrix-valued state)")
    for param in base.parameters():
        param.requires_grad_(False)
    if method == "lora":
        targets = tuple(config.lora_targets) or lora_lib.DEFAULT_TARGETS
        lora_config = lora_lib.lora_config(config.lora_rank, config.lora_alpha, config.lora_dropout, targets)
        return Adapted(base, lora_lib.add_lora(base, lora_config), None, lora_config)
    if method == "state":
        initial = InitialState(base, tune_shift=config.tune_shift)
        return Adapted(base, base, initial, None, weight_fingerprint(base))
    raise ConfigError(f"unknown method {method!r}: use full, lora or state")


def store_frozen_weights(adapted: Adapted, dtype: str, sharded: bool = False) -> str:
    """Keep the frozen weights of a lora or state run in 16 bits as ``dtype`` asks (see
    ``finetune.frozen``); returns what was stored (``"97 weights in bfloat16"``) or ``""``."""
    if sharded:  # FSDP shards each block as one flat tensor of one dtype
        if dtype in ("bf16", "fp16"):
            raise ConfigError(
                f"--frozen-dtype {dtype} does not combine with --strategy fsdp; use --frozen-dtype fp32 "
                "(or auto), or --strategy ddp"
            )
        return ""
    counts = store_frozen(adapted.model, dtype)
    return ", ".join(f"{n} weights in {name}" for name, n in counts.items())


def strip_wrapper(name: str) -> str:
    """A LossModule parameter name as seen through DDP (``module.``) or not."""
    return name.removeprefix("module.")


def trainable_names(module: nn.Module) -> list[str]:
    return [strip_wrapper(n) for n, p in module.named_parameters() if p.requires_grad]


def base_identity(base: RWKV) -> dict:
    """What a checkpoint records to recognise its base model on resume (config and fingerprint)."""
    return {"config": base.config.to_dict(), "fingerprint": weight_fingerprint(base)["sha256"]}


def check_base(saved: dict | None, base: RWKV, run: str, model_path: str | None) -> None:
    if saved is None:
        return
    if saved != base_identity(base):
        raise CheckpointError(
            f"{run} was fine-tuned from other weights than {model_path}; give the same --model to "
            "resume it, or use another --out"
        )


def load_trainable(module: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Put a checkpoint's trainable tensors back into an (unwrapped) LossModule."""
    expected = set(trainable_names(module))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{where} does not match this run's trainable tensors (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); resume with the same --method and LoRA options, or use another --out"
        )
    with torch.no_grad():
        params = dict(module.named_parameters())
        for name, value in tensors.items():
            params[name].copy_(value)


def write_result(out: Path, method: str, adapted: Adapted, tensors: dict[str, torch.Tensor]) -> Path:
    """The run's product for ``lora`` (adapter folder) or ``state`` (state file), from gathered tensors."""
    if method == "lora":
        model_tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
        return lora_lib.save_adapter(out / ADAPTER_DIR, model_tensors, adapted.lora_config)
    if method == "state":
        values = {}
        for name in NAMES:  # the untuned shifts are the InitialState's buffers (never sharded)
            key = f"initial_state.{name}"
            values[name] = tensors[key] if key in tensors else getattr(adapted.initial_state, name).cpu()
        path = out / STATE_FILE
        save_tuned_state(path, adapted.base, values, adapted.fingerprint)
        return path
    raise ValueError(method)
