"""Learning-rate schedules: linear warmup, then cosine, exponential or no decay.

The multiplier is a pure function of the progress, so the schedule needs no state of its own
to resume. As in RWKV-LM, warmup starts at 1% of the peak (not 0) and rises linearly; the
exponential decay is log-linear from ``lr`` to ``lr_final`` (RWKV-LM's default); cosine follows
half a cosine from ``lr`` to ``lr_final``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from eaglefinch.errors import ConfigError

ScheduleKind = Literal["cosine", "exp", "constant"]
KINDS = ("cosine", "exp", "constant")


@dataclass(frozen=True)
class Schedule:
    lr: float  # peak learning rate
    lr_final: float  # reached at the end of training (cosine, exp)
    warmup_steps: int = 0
    kind: ScheduleKind = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown schedule {self.kind!r}: use one of {', '.join(KINDS)}")
        if not self.lr > 0:
            raise ConfigError(f"the learning rate must be positive, got {self.lr}")
        if not 0 < self.lr_final <= self.lr:
            raise ConfigError(f"lr_final must be in (0, lr = {self.lr}], got {self.lr_final}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def __call__(self, step: int, progress: float) -> float:
        """The learning rate for ``step`` (0-based) at ``progress`` in [0, 1] of the whole run."""
        if step < self.warmup_steps:
            return self.lr * (0.01 + 0.99 * step / self.warmup_steps)
        if self.kind == "constant":
            return self.lr
        p = min(max(progress, 0.0), 1.0)
        if self.kind == "exp":
            return self.lr * math.exp(math.log(self.lr_final / self.lr) * p)
        return self.lr_final + 0.5 * (self.lr - self.lr_final) * (1 + math.cos(math.pi * p))
