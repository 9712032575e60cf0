"""The MQAR report: every run as JSON, the best learning rate per cell as a markdown table, and a
figure like the paper's Figure 4 (accuracy against d_model, one panel per T, one line per model)."""

from __future__ import annotations

from pathlib import Path

from eaglefinch.experiments import write_json_atomic, write_text_atomic
from eaglefinch.experiments.mqar.models import LABELS

STYLES = {  # one colour per model, the same in every figure
    "finch": ("tab:red", "o"),
    "eagle": ("tab:orange", "s"),
    "rwkv4": ("tab:green", "^"),
    "attention": ("tab:blue", "D"),
    "mamba": ("tab:purple", "v"),
}


def best_runs(runs: list[dict]) -> dict[tuple, dict]:
    """The best run per (model, T, N, d_model): highest accuracy, then fewest steps."""
    best: dict[tuple, dict] = {}
    for r in runs:
        key = (r["model"], r["seq_len"], r["num_kv_pairs"], r["d_model"])
        if key not in best or (r["accuracy"], -r["steps"]) > (best[key]["accuracy"], -best[key]["steps"]):
            best[key] = r
    return best


def markdown_table(runs: list[dict], models: list[str], cells: list[tuple[int, int]], dims: list[int]) -> str:
    """One table per (T, N): rows are models, columns d_model; each entry 'accuracy % (best lr)'."""
    best = best_runs(runs)
    lines = []
    for t, n in cells:
        lines.append(f"**T = {t}, N = {n}** (held-out accuracy, best learning rate)\n")
        lines.append("| model | " + " | ".join(f"d={d}" for d in dims) + " |")
        lines.append("|---|" + "---|" * len(dims))
        for m in models:
            row = []
            for d in dims:
                r = best.get((m, t, n, d))
                row.append("–" if r is None else f"{100 * r['accuracy']:.1f} ({r['lr']:.0e})")
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def runs_table(runs: list[dict]) -> str:
    """Every run, in the order it finished."""
    lines = [
        "| model | T | N | d | lr | accuracy % | steps | epochs | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {LABELS.get(r['model'], r['model'])} | {r['seq_len']} | {r['num_kv_pairs']} | "
            f"{r['d_model']} | "
            f"{r['lr']:.1e} | {100 * r['accuracy']:.1f} | {r['steps']} | {r['epochs']} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(
    path: Path, runs: list[dict], models: list[str], cells: list[tuple[int, int]], dims: list[int]
) -> None:
    """Accuracy against d_model, one panel per (T, N), one line per model; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_runs(runs)
    # at least 6 inches wide, so that a single panel still has room for the legend of five models
    fig, axes = plt.subplots(
        1, len(cells), figsize=(max(6.0, 3.6 * len(cells)), 3.4), sharey=True, squeeze=False
    )
    for ax, (t, n) in zip(axes[0], cells, strict=True):
        for m in models:
            xs = [d for d in dims if (m, t, n, d) in best]
            if not xs:
                continue
            colour, marker = STYLES.get(m, (None, "o"))
            ys = [best[(m, t, n, d)]["accuracy"] for d in xs]
            ax.plot(xs, ys, marker=marker, color=colour, label=LABELS.get(m, m))
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Sequence length {t}, {n} KV pairs", fontsize=10)
        ax.set_xlabel("model dimension")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write(out: Path, runs: list[dict], stamp: dict, grid: dict) -> None:
    """Write ``results.json`` (stamp, grid, every run, best per cell), ``results.md``, ``mqar.png``."""
    models, cells, dims = grid["models"], [tuple(c) for c in grid["cells"]], grid["dims"]
    best = best_runs(runs)
    write_json_atomic(
        out / "results.json",
        {
            "benchmark": "mqar",
            "environment": stamp,
            "grid": grid,
            "runs": runs,
            "best": sorted(best.values(), key=lambda r: (r["seq_len"], r["d_model"], r["model"])),
        },
    )
    planned = len(models) * len(cells) * len(dims)
    total_s = sum(r["wall_s"] for r in runs)
    text = (
        f"# MQAR results\n\n{len(best)} of {planned} cells have at least one run; "
        f"{len(runs)} runs, {total_s / 60:.1f} minutes of training.\n\n"
        f"Command: `{grid.get('command', '')}`\n\n"
        + markdown_table(runs, models, cells, dims)
        + "\n## Every run\n\n"
        + runs_table(runs)
        + "\n"
    )
    write_text_atomic(out / "results.md", text)
    if runs:
        plot(out / "mqar.png", runs, models, cells, dims)
