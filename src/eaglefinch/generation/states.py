"""Saving a ``Context`` to a safetensors file and loading it back, never into the wrong model.

The file holds the state tensors, the next-token logits and the tokens seen, and in its metadata
the model's identity: its config and a fingerprint of its weights. Loading checks both:

* same weight dtype: a SHA-256 of sampled weight values must match exactly;
* another dtype (a state saved from the fp32 model, used with its bf16 copy): the sampled values
  must agree to bf16 precision.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from eaglefinch.config import RWKVConfig
from eaglefinch.errors import ConfigError, StateError
from eaglefinch.generation.context import Context
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState

FORMAT = "eaglefinch-state"
FORMAT_VERSION = "2"  # 2: fingerprint positions computed exactly (1 rounded them in float32)
SAMPLES_PER_TENSOR = 16
SAMPLE_RTOL, SAMPLE_ATOL = 1e-2, 1e-4  # bf16 keeps 8 significant bits (relative error <= 2^-8)


def _sampled_tensors(model: RWKV) -> list[torch.Tensor]:
    """Weights spread over the network: embedding, head, first, middle and last layers."""
    L = model.config.n_layer
    blocks = model.blocks
    return [
        model.emb.weight,
        model.head.weight,
        model.ln_out.weight,
        blocks[0].att.receptance.weight,
        blocks[0].att.time_faaaa,
        blocks[L // 2].att.key.weight,
        blocks[L // 2].ffn.key.weight,
        blocks[L - 1].ffn.value.weight,
        blocks[L - 1].att.output.weight,
    ]


def sample_index(numel: int) -> torch.Tensor:
    """``SAMPLES_PER_TENSOR`` evenly spaced positions from 0 to ``numel - 1``, in exact integers (a
    float32 linspace rounds the last one past the end above 2**24 elements, and differs by device)."""
    steps = torch.arange(SAMPLES_PER_TENSOR, dtype=torch.int64)
    return steps * (numel - 1) // (SAMPLES_PER_TENSOR - 1)


def weight_fingerprint(model: RWKV) -> dict:
    """``{"dtype", "sha256", "samples"}``: a few hundred weight values identify a checkpoint."""
    digest = hashlib.sha256()
    samples: list[float] = []
    with torch.no_grad():
        for tensor in _sampled_tensors(model):
            flat = tensor.detach().reshape(-1)
            index = sample_index(flat.numel()).to(flat.device)
            picked = flat[index].cpu()
            digest.update(picked.contiguous().view(torch.uint8).numpy().tobytes())
            samples.extend(picked.double().tolist())
    return {
        "dtype": str(model.dtype).removeprefix("torch."),
        "sha256": digest.hexdigest(),
        "samples": samples,
    }


def _describe(config: RWKVConfig) -> str:
    return f"{config.arch} L{config.n_layer}-D{config.n_embd} (vocab {config.vocab_size})"


def check_identity(metadata: dict, model: RWKV, path: str | os.PathLike) -> None:
    """Raise StateError unless the file's config and fingerprint are ``model``'s."""
    try:
        config = RWKVConfig.from_dict(json.loads(metadata["config"]))
        saved = json.loads(metadata["fingerprint"])
    except (KeyError, ValueError, ConfigError) as error:
        raise StateError(f"{path}: the state's model identity is missing or unreadable ({error})") from None
    if config != model.config:
        raise StateError(
            f"{path} is a state of a {_describe(config)} model; this model is {_describe(model.config)}"
        )
    ours = weight_fingerprint(model)
    if saved.get("dtype") == ours["dtype"]:
        same = saved.get("sha256") == ours["sha256"]
    else:
        theirs = torch.tensor(saved.get("samples", []), dtype=torch.float64)
        mine = torch.tensor(ours["samples"], dtype=torch.float64)
        same = theirs.shape == mine.shape and bool(
            torch.allclose(theirs, mine, rtol=SAMPLE_RTOL, atol=SAMPLE_ATOL)
        )
    if not same:
        raise StateError(
            f"{path} was saved from other weights of the same shape ({_describe(config)}); "
            "a state only makes sense with the checkpoint that produced it"
        )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(
    path: str | os.PathLike, model: RWKV, context: Context, fingerprint: dict | None = None
) -> None:
    """Write ``context`` (state, logits, tokens seen) with ``model``'s identity, atomically (safetensors).

    ``fingerprint``: ``weight_fingerprint(model)`` taken earlier, for a model whose weights are now
    sharded across processes.
    """
    from safetensors.torch import save

    state = context.state
    state.check(model.config)
    counts = torch.tensor([len(t) for t in context.tokens], dtype=torch.int64)
    flat = torch.tensor([t for row in context.tokens for t in row], dtype=torch.int64)
    tensors = {name: t.detach().contiguous().cpu() for name, t in state.tensors().items()}
    tensors["token_counts"] = counts
    tensors["tokens"] = flat
    if context.logits is not None:
        tensors["logits"] = context.logits.detach().float().contiguous().cpu()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "fingerprint": json.dumps(fingerprint or weight_fingerprint(model)),
    }
    _atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def load_state(path: str | os.PathLike, model: RWKV) -> Context:
    """Read a state written by ``save_state`` for ``model`` (moved to its device and dtype).

    Raises StateError for a missing or unreadable file, a file that is not a state, or a state of
    another model.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise StateError(f"{path}: no such state file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise StateError(f"{path} is not a readable state file (truncated or corrupt?): {error}") from None
    if metadata.get("format") != FORMAT:
        raise StateError(f"{path} is not an eaglefinch state file (no '{FORMAT}' header)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise StateError(
            f"{path} has state format {metadata.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION!r}: save the state again with this version"
        )
    check_identity(metadata, model, path)
    try:
        state = RWKVState(att_shift=tensors["att_shift"], wkv=tensors["wkv"], ffn_shift=tensors["ffn_shift"])
        counts, flat = tensors["token_counts"].tolist(), tensors["tokens"].tolist()
    except KeyError as error:
        raise StateError(f"{path} lacks the state tensor {error}") from None
    state.check(model.config)
    if len(counts) != state.batch_size or sum(counts) != len(flat):
        raise StateError(f"{path}: token counts do not match the state's {state.batch_size} rows")
    rows, start = [], 0
    for n in counts:
        rows.append(flat[start : start + n])
        start += n
    logits = tensors.get("logits")
    if logits is not None:
        logits = logits.to(model.device)
    state = state.to(model.device, model.dtype)
    return Context(state, logits, rows)
