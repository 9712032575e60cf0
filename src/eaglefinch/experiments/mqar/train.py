"""Train one model on one MQAR cell at one learning rate, the same way for every model.

AdamW (weight decay 0.1 on every parameter, as Zoology's trainer), a cosine schedule from the
learning rate to zero over all planned steps, cross-entropy on the scored positions only, held-out
accuracy after every epoch, and an early stop once it reaches the target (99%).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eaglefinch.experiments.mqar.data import IGNORE, VOCAB_SIZE, MQARData, generate
from eaglefinch.experiments.mqar.models import MQARModel


@dataclass(frozen=True)
class TrainConfig:
    """Everything but the cell (model, T, N, d_model) and the learning rate."""

    num_train: int = 100_000
    num_test: int = 3_000
    epochs: int = 64
    batch_size: int = 256
    weight_decay: float = 0.1
    target_accuracy: float = 0.99
    seed: int = 0
    vocab_size: int = VOCAB_SIZE

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a model, a sequence length T with N key-value pairs, a width."""

    model: str
    seq_len: int
    num_kv_pairs: int
    d_model: int


def make_data(cell: Cell, config: TrainConfig) -> tuple[MQARData, MQARData]:
    """Train and held-out sets: different seeds, so no example is shared by construction of the stream."""
    train = generate(config.num_train, cell.seq_len, cell.num_kv_pairs, config.seed, config.vocab_size)
    test = generate(
        config.num_test, cell.seq_len, cell.num_kv_pairs, config.seed + 1_000_003, config.vocab_size
    )
    return train, test


@torch.no_grad()
def accuracy(model: MQARModel, data: MQARData, batch_size: int) -> float:
    """Fraction of scored positions where the argmax of the logits is the label."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for start in range(0, data.inputs.shape[0], batch_size):
        logits, targets = model.scored_logits(
            data.inputs[start : start + batch_size], data.labels[start : start + batch_size], IGNORE
        )
        correct += int((logits.argmax(dim=-1) == targets).sum())
        total += targets.numel()
    model.train(was_training)
    return correct / max(total, 1)


def train_run(
    cell: Cell,
    lr: float,
    config: TrainConfig,
    data: tuple[MQARData, MQARData] | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
    position: int = 0,
) -> dict:
    """Train from a fixed seed and return the run record (accuracy is the best held-out accuracy seen)."""
    train, test = data if data is not None else make_data(cell, config)
    torch.manual_seed(config.seed)
    model = MQARModel(cell.model, cell.d_model, config.vocab_size, cell.seq_len).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    n = train.inputs.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
    order_gen = torch.Generator().manual_seed(config.seed)

    start_time = time.perf_counter()
    best = 0.0
    step = epochs_done = 0
    curve: list[float] = []
    bar = tqdm(
        total=total_steps,
        desc=f"{cell.model} T={cell.seq_len} d={cell.d_model} lr={lr:.1e}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
        position=position,  # one line per process when several run side by side
    )
    model.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(n, generator=order_gen).to(train.inputs.device).split(config.batch_size):
            logits, targets = model.scored_logits(train.inputs[idx], train.labels[idx], IGNORE)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if not math.isfinite(loss.item()):
                break
        epochs_done += 1
        acc = accuracy(model, test, max(config.batch_size, 256))
        curve.append(round(acc, 5))
        best = max(best, acc)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
        if acc >= config.target_accuracy or not math.isfinite(loss.item()):
            break
    bar.close()
    return {
        "model": cell.model,
        "seq_len": cell.seq_len,
        "num_kv_pairs": cell.num_kv_pairs,
        "d_model": cell.d_model,
        "lr": lr,
        "accuracy": best,
        "final_accuracy": curve[-1] if curve else 0.0,
        "steps": step,
        "epochs": epochs_done,
        "wall_s": round(time.perf_counter() - start_time, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "diverged": not math.isfinite(loss.item()),
        "accuracy_by_epoch": curve,
    }
