"""Model configuration: one frozen, typed dataclass, named presets, and inference from checkpoint shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from eaglefinch.errors import CheckpointError, ConfigError

Version = Literal["5.2", "6.0"]
VERSIONS: tuple[str, ...] = ("5.2", "6.0")
ARCH_NAMES = {"5.2": "Eagle", "6.0": "Finch"}


@dataclass(frozen=True)
class RWKVConfig:
    """Sizes of an Eagle (version "5.2") or Finch (version "6.0") model.

    Derived sizes left as ``None`` are filled in ``__post_init__`` with the official defaults.
    """

    version: Version = "6.0"
    n_layer: int = 12
    n_embd: int = 768
    head_size: int = 64  # N: every head's matrix-valued state is N x N
    dim_att: int | None = None  # A: width of the time-mixing projections (= n_embd in every release)
    dim_ffn: int | None = None  # F: hidden width of channel mixing, int(3.5 * n_embd) // 32 * 32
    vocab_size: int = 65536  # the World vocabulary (65,529 ids + 0) rounded up
    tm_lora_rank: int | None = None  # Finch token-shift (ddlerp) LoRA rank: 32 (64 at n_embd 4096)
    decay_lora_rank: int | None = None  # Finch decay LoRA rank: 64 (128 at n_embd 4096)
    time_state: bool = False  # checkpoint carries a tuned initial WKV state (att.time_state, H x N x N)

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ConfigError(f"unknown RWKV version {self.version!r}: expected one of {', '.join(VERSIONS)}")
        for name in ("n_layer", "n_embd", "head_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        big = self.n_embd >= 4096
        defaults = {
            "dim_att": self.n_embd,
            "dim_ffn": int(3.5 * self.n_embd) // 32 * 32,
            "tm_lora_rank": 64 if big else 32,
            "decay_lora_rank": 128 if big else 64,
        }
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            elif getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim_att % self.head_size:
            raise ConfigError(f"dim_att {self.dim_att} is not a multiple of head_size {self.head_size}")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size

    @property
    def arch(self) -> str:
        """ "Eagle" or "Finch"."""
        return ARCH_NAMES[self.version]

    def replace(self, **changes) -> RWKVConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> RWKVConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str) -> RWKVConfig:
        """A named configuration: the six released models (paper Table 11), small ones for tests and demos."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> RWKVConfig:
        """Infer the configuration from tensor shapes alone (a pure function of the keys and shapes)."""
        return infer_config(state_dict)


PRESETS: dict[str, RWKVConfig] = {
    # released models, paper Table 11
    "eagle-0.4b": RWKVConfig("5.2", n_layer=24, n_embd=1024),
    "eagle-1.5b": RWKVConfig("5.2", n_layer=24, n_embd=2048),
    "eagle-3b": RWKVConfig("5.2", n_layer=32, n_embd=2560),
    "eagle-7b": RWKVConfig("5.2", n_layer=32, n_embd=4096),
    "finch-1.6b": RWKVConfig("6.0", n_layer=24, n_embd=2048),
    "finch-3b": RWKVConfig("6.0", n_layer=32, n_embd=2560),
    # the benchmark shape of the issues (a random model, no release)
    "finch-l12-d768": RWKVConfig("6.0", n_layer=12, n_embd=768),
    "eagle-l12-d768": RWKVConfig("5.2", n_layer=12, n_embd=768),
    # small models for tests and the demo
    "eagle-tiny": RWKVConfig("5.2", n_layer=2, n_embd=128, vocab_size=65536),
    "finch-tiny": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=65536),
    "eagle-small": RWKVConfig("5.2", n_layer=4, n_embd=256),
    "finch-small": RWKVConfig("6.0", n_layer=4, n_embd=256),
}

RELEASED_PARAMETERS = {
    "eagle-0.4b": 4.62e8,
    "eagle-1.5b": 1.58e9,
    "eagle-3b": 3.06e9,
    "eagle-7b": 7.52e9,
    "finch-1.6b": 1.60e9,
    "finch-3b": 3.10e9,
}


def detect_version(keys) -> str:
    """The RWKV generation a set of checkpoint keys belongs to: "4", "5", "5.1", "5.2" or "6.0"."""
    keys = list(keys)
    if any("time_maa" in k for k in keys):
        return "6.0"
    if any(".ln_x." in k for k in keys):
        if not any(".att.gate." in k for k in keys):
            return "5"
        return "5.2"  # 5.1 vs 5.2 is told apart by shape in infer_config
    if any(".att.time_first" in k for k in keys):
        return "4"
    return "unknown"


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(sd[key].shape)
    except KeyError:
        raise CheckpointError(
            f"checkpoint lacks {key!r}: not a complete RWKV Eagle/Finch checkpoint"
        ) from None


def infer_config(sd: Mapping[str, torch.Tensor]) -> RWKVConfig:
    """Read every size from tensor shapes (see SPEC: keys and shapes of a raw official checkpoint)."""
    if "emb.weight" not in sd:
        raise CheckpointError("no 'emb.weight' key: this is not an RWKV checkpoint")
    version = detect_version(sd.keys())
    if version not in VERSIONS:
        if version == "unknown":
            raise CheckpointError(
                "unrecognised checkpoint layout: neither Eagle (RWKV-5.2) nor Finch (RWKV-6)"
            )
        raise CheckpointError(
            f"this is an RWKV-{version} checkpoint; "
            "eaglefinch runs Eagle (RWKV-5.2) and Finch (RWKV-6.0) only"
        )
    if version == "5.2":
        td = _shape(sd, "blocks.0.att.time_decay")
        if len(td) != 2 or td[1] == 1:
            raise CheckpointError(
                "this is an RWKV-5.1 checkpoint (per-head decay); eaglefinch runs 5.2 and 6.0"
            )
    vocab, n_embd = _shape(sd, "emb.weight")
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    n_layer = max(layers) + 1 if layers else 0
    if sorted(layers) != list(range(n_layer)) or n_layer == 0:
        raise CheckpointError(f"checkpoint blocks are not numbered 0..L-1 (found {sorted(layers)[:8]}...)")
    n_head, head_size = _shape(sd, "blocks.0.att.time_faaaa")[:2]
    dim_att = _shape(sd, "blocks.0.att.key.weight")[0]
    dim_ffn = _shape(sd, "blocks.0.ffn.key.weight")[0]
    extra = {}
    if version == "6.0":
        extra["tm_lora_rank"] = _shape(sd, "blocks.0.att.time_maa_w2")[1]
        extra["decay_lora_rank"] = _shape(sd, "blocks.0.att.time_decay_w1")[1]
    if n_head * head_size != dim_att:
        raise CheckpointError(
            f"inconsistent shapes: time_faaaa says {n_head} heads of {head_size} "
            f"but key.weight has {dim_att} rows"
        )
    time_state = "blocks.0.att.time_state" in sd
    return RWKVConfig(
        time_state=time_state,
        version=version,
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=head_size,
        dim_att=dim_att,
        dim_ffn=dim_ffn,
        vocab_size=vocab,
        **extra,
    )
