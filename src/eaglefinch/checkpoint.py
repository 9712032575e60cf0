"""Read and write Eagle/Finch checkpoints: official RWKV-LM ``.pth`` state dicts and safetensors.

Loading builds the model on the meta device and assigns the file's (memory-mapped) tensors to it,
so the weights are never held twice. Every way a file can be wrong ends in one CheckpointError line.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from eaglefinch.config import RWKVConfig, infer_config
from eaglefinch.errors import CheckpointError
from eaglefinch.model.rwkv import RWKV

# Small per-channel parameters the kernels consume in float32; they stay float32 when the rest
# of a model is cast to bf16/fp16, since rounding a decay compounds over thousands of tokens.
FLOAT32_PARAMETERS = ("time_decay", "time_faaaa")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}: use one of fp32, bf16, fp16") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The raw tensors of a ``.pth`` or ``.safetensors`` file, memory-mapped where possible."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint file (.pth or .safetensors)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {first}"
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict, or one nested under 'state_dict'/'model' as trainers save them."""
    if isinstance(obj, Mapping) and "_strategy" in obj:
        raise CheckpointError(
            f"{path} was converted by the rwkv package for strategy {obj['_strategy']!r}; "
            "give the raw .pth instead"
        )
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    # DDP / torch.compile wrappers prefix every key; this is the one place keys are rewritten.
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod.", "_forward_module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: RWKVConfig, skeleton: RWKV | None = None
) -> None:
    """Every expected key present with its shape, and nothing else.

    ``skeleton``: a meta model to compare with."""
    if skeleton is None:
        with torch.device("meta"):
            skeleton = RWKV(config, init=False)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unknown = sorted(set(state_dict) - set(expected))
    if missing:
        raise CheckpointError(
            f"checkpoint is missing {len(missing)} key(s), e.g. {missing[:3]}; it is not a complete "
            f"RWKV-{config.version} ({config.arch}) model"
        )
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} key(s) this {config.arch} model does not use, e.g. {unknown[:3]}"
        )
    for key, shape in expected.items():
        got = tuple(state_dict[key].shape)
        if got != shape:
            raise CheckpointError(
                f"inconsistent shapes: {key} is {got}, expected {shape} for this {config.arch} layout"
            )
        if not state_dict[key].is_floating_point():
            raise CheckpointError(f"{key} has dtype {state_dict[key].dtype}; weights must be floating point")


def cast_model(model: RWKV, dtype: torch.dtype, progress: bool = False) -> RWKV:
    """Cast weights to ``dtype`` (FLOAT32_PARAMETERS: float32), one tensor at a time.

    ``progress`` shows a tqdm bar (on stderr) over the bytes converted: the slow part of loading
    a large memory-mapped checkpoint, since its pages are read here.
    """
    params = list(model.named_parameters())
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(p.numel() * p.element_size() for _, p in params)
        bar = tqdm(total=total, desc="loading", unit="B", unit_scale=True, leave=False)
    for name, param in params:
        target = dtype
        # Decay and bonus that change dtype are widened to float32 instead (nothing is lost); left
        # alone when already in ``dtype``, so that loading and saving stays bit-exact.
        if name.rsplit(".", 1)[-1] in FLOAT32_PARAMETERS and param.dtype != dtype:
            target = torch.float32
        if param.dtype != target:
            param.data = param.data.to(target)
        if bar is not None:
            bar.update(param.numel() * param.element_size())
    if bar is not None:
        bar.close()
    return model


def model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> RWKV:
    config = infer_config(state_dict)
    with torch.device("meta"):
        model = RWKV(config, init=False)
    check_state_dict(state_dict, config, skeleton=model)
    model.load_state_dict(state_dict, strict=True, assign=True)
    dtype = parse_dtype(dtype)
    if dtype is None:
        dtypes = {p.dtype for p in state_dict.values()}
        dtype = next(iter(dtypes)) if len(dtypes) == 1 else torch.float32
        if dtype == torch.float16 and (device is None or torch.device(device).type == "cpu"):
            dtype = torch.float32  # fp16 arithmetic on CPU is slow and overflow-prone
    if device is not None:
        model.to(device)
    cast_model(model, dtype, progress=progress)
    return model.eval()


def load(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> RWKV:
    """Load an Eagle/Finch model from an official ``.pth`` or a ``.safetensors`` file.

    ``dtype`` None keeps the file's dtype (fp16 becomes fp32 on CPU); ``device`` None keeps CPU;
    ``progress`` shows a progress bar on stderr while the weights are read and converted.
    """
    return model_from_state_dict(read_state_dict(path), dtype=dtype, device=device, progress=progress)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Write a state dict in the format the suffix names (.pth or .safetensors), atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    elif path.suffix in (".pth", ".pt"):
        _atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    else:
        raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; use .pth or .safetensors")


def save(model: RWKV, path: str | os.PathLike) -> None:
    """Save ``model``'s weights with the official key names: ``.pth`` (RWKV-LM) or ``.safetensors``."""
    metadata = {"format": "pt", "eaglefinch_config": json.dumps(model.config.to_dict())}
    save_state_dict(model.state_dict(), path, metadata=metadata)
