"""Training metrics: one JSON object per line, and the loss-curve plot drawn from them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class MetricsLog:
    """Append-only JSONL of training records (``{"step": ..., "loss": ...}`` and eval records).

    On resume from step ``keep_until``, records of later steps (written after that checkpoint by
    the interrupted run) are dropped so that the file describes one consistent run.
    """

    def __init__(self, path: str | os.PathLike, keep_until: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step(line) <= keep_until
            ]
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # a torn last line from a crash: drop it


def read_metrics(path: str | os.PathLike) -> list[dict]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """Training loss (raw and smoothed) and held-out loss against tokens seen; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind", "train") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        x = [r["tokens"] for r in train]
        y = [r["loss"] for r in train]
        window = max(1, len(y) // 30)
        if window > 1:
            ax.plot(x, y, color="tab:blue", alpha=0.3, linewidth=0.8, label="train loss (each step)")
        smooth = [sum(y[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(y))]
        label = f"train loss (mean of {window} steps)" if window > 1 else "train loss"
        ax.plot(x, smooth, color="tab:blue", linewidth=1.8, label=label)
    if evals:
        ax.plot(
            [r["tokens"] for r in evals],
            [r["val_loss"] for r in evals],
            "o--",
            color="tab:orange",
            label="held-out loss",
        )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{png_path.stem}.", suffix=".png", dir=png_path.parent)
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
