"""Many processes: ``torchrun`` + ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Start a run on N processes of one machine with::

    torchrun --nproc_per_node N --no-python eaglefinch train --data corpus --out run ...

Every process reads the same environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) that
torchrun sets. With ``strategy="ddp"`` each process holds the whole model and gradients are
averaged (DistributedDataParallel); with ``strategy="fsdp"`` parameters, gradients and optimiser
state are sharded across processes (``torch.distributed.fsdp.fully_shard``, one unit per block),
for models that do not fit on one device. A global batch is the same set of samples whatever the
number of processes: process r takes its own slice of it (see ``TokenWindows``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from eaglefinch.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (or run alone when WORLD_SIZE is unset or 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = pick_device(device)
    if world_size <= 1:
        return DistInfo(device=base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=base)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a tensor over processes (itself when alone)."""
    if not info.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def broadcast_tensor(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's value of a tensor, on every process."""
    if info.distributed:
        dist.broadcast(value, src=0)
    return value


def wrap(module: nn.Module, info: DistInfo, strategy: str, blocks: nn.ModuleList | None = None) -> nn.Module:
    """Wrap the loss module for data parallelism (nothing to do for one process)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not info.distributed:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for block in blocks or ():
        fully_shard(block)
    fully_shard(module)
    return module


def full_state_dicts(module: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, info: DistInfo):
    """(model state dict, optimizer state dict) gathered whole onto the CPU, for saving from rank 0.

    For FSDP the optimizer state is keyed by parameter name (``torch.distributed.checkpoint``'s
    layout); otherwise it is ``optimizer.state_dict()``.
    """
    if strategy == "fsdp" and info.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(
            module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return module.state_dict(), optimizer.state_dict()


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, strategy: str, info: DistInfo
) -> None:
    """Inverse of ``full_state_dicts`` for the optimizer (the model is loaded before wrapping)."""
    if strategy == "fsdp" and info.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)
