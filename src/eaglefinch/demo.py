"""``eaglefinch demo``: build a small corpus from the data shipped with eaglefinch, train a tiny
Finch (or Eagle) on it for a few minutes on the CPU, and generate a sample. No download.

The corpus follows the shape of the paper's World v2 mixture: about 70% English (books of the
King James Bible), 15% multilingual text (the Universal Declaration of Human Rights in 29
languages) and 15% code (the running Python's standard library). See ``eaglefinch/data/README.md``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from eaglefinch.config import RWKVConfig
from eaglefinch.errors import ConfigError, DataError
from eaglefinch.train.mixture import package_data_dir

SIZES = ("tiny", "small")
ARCHS = ("finch", "eagle")
PROMPT = "And God said unto Moses,"


@dataclass(frozen=True)
class DemoOptions:
    arch: str = "finch"
    size: str = "tiny"
    seconds: float = 180.0
    out: str = "eaglefinch-demo"
    prompt: str = PROMPT
    sample_tokens: int = 80
    ctx_len: int = 128
    batch_size: int = 8
    lr: float = 4e-3  # a 2-layer, 128-wide model takes a high rate; cosine to a tenth of it
    warmup_steps: int = 2
    seed: int = 0
    eval_batches: int = 4  # held-out batches evaluated before and after training
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}: use finch or eagle")
        if self.size not in SIZES:
            raise ConfigError(f"unknown size {self.size!r}: use one of {', '.join(SIZES)}")
        if not self.seconds > 0:
            raise ConfigError(f"the training time must be positive, got {self.seconds} s")

    @property
    def model_config(self) -> RWKVConfig:
        return RWKVConfig.preset(f"{self.arch}-{self.size}")


def demo_mixture_path() -> Path:
    return package_data_dir() / "demo_mixture.json"


# Where `eaglefinch demo` leaves its model (with the default --out), which `serve` and `finetune`
# use when no --model is given, and the small chat file `finetune` uses when no --data is given.
DEMO_MODEL = Path(DemoOptions.out) / "run" / "model.pth"


def demo_chat_path() -> Path:
    return package_data_dir() / "demo_chat.jsonl"


def resolve_model(path: str | None) -> Path:
    """``--model``, or the demo's model when none is given (a one-line error if neither exists)."""
    if path is not None:
        return Path(path)
    if DEMO_MODEL.is_file():
        return DEMO_MODEL
    raise ConfigError(
        f"no --model given and no demo model at {DEMO_MODEL}: pass --model FILE (an official .pth or "
        ".safetensors), or run `eaglefinch demo` first"
    )


def build_demo_corpus(out: Path, workers: int, progress: bool, log=print) -> tuple[Path, dict]:
    """Build (or reuse) the demo corpus under ``out/data``; returns its prefix and summary."""
    from eaglefinch.train.binidx import BinidxReader
    from eaglefinch.train.corpus import build_corpus
    from eaglefinch.train.mixture import Mixture

    spec = demo_mixture_path()
    if not spec.exists():
        raise DataError(f"the demo data is missing from the installation ({spec})")
    mixture = Mixture.from_file(spec)
    prefix = out / "data" / "demo"
    summary_path = prefix.with_suffix(".json")
    if summary_path.exists():
        try:
            BinidxReader(prefix)
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            log(f"corpus: reusing {prefix}.bin/.idx ({summary['tokens']:,} tokens)")
            return prefix, summary
        except (DataError, json.JSONDecodeError, KeyError):
            pass
    log("corpus: tokenizing the shipped English and multilingual text and the Python standard library")
    result = build_corpus(mixture, prefix, workers=workers, progress=progress)
    return result.prefix, result.summary


def sample_text(model_path: Path, prompt: str, max_new_tokens: int, seed: int) -> str:
    from eaglefinch.checkpoint import load
    from eaglefinch.generation import generate
    from eaglefinch.tokenizer import WorldTokenizer

    model = load(model_path)
    return generate(model, WorldTokenizer(), prompt, max_new_tokens, temperature=0.8, top_p=0.9, seed=seed)


def run_demo(options: DemoOptions, log=print) -> dict:
    """The whole demo; returns what it measured (also written to ``out/demo.json``)."""
    from eaglefinch.cli.data import summary_lines
    from eaglefinch.train.loop import TrainConfig, describe, train

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prefix, summary = build_demo_corpus(out, options.workers, options.progress, log=log)
    for line in summary_lines(summary)[1:]:
        log(line)
    run_dir = out / "run"
    if (run_dir / "run.json").exists():  # the demo starts over; its own earlier run folder goes
        shutil.rmtree(run_dir)
    val_tokens = min(options.eval_batches * options.batch_size * options.ctx_len, summary["tokens"] // 20)
    config = TrainConfig(
        data=str(prefix),
        out=str(run_dir),
        ctx_len=options.ctx_len,
        batch_size=options.batch_size,
        seconds=options.seconds,
        lr=options.lr,
        lr_final=options.lr / 10,
        warmup_steps=options.warmup_steps,
        schedule="cosine",
        seed=options.seed,
        resume=False,
        val_tokens=val_tokens,
        eval_batches=options.eval_batches,
        progress=options.progress,
        precision="fp32",
        device="cpu",
    )
    model_config = options.model_config
    log(
        f"training a {describe(model_config)} for {options.seconds:.0f} s "
        f"(context {options.ctx_len}, batch {options.batch_size})"
    )
    result = train(config, model_config)
    text = sample_text(result.model_path, options.prompt, options.sample_tokens, options.seed)
    report = {
        "model": model_config.to_dict(),
        "corpus": str(prefix),
        "corpus_tokens": summary["tokens"],
        "steps": result.step,
        "tokens_trained": result.tokens,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "val_loss_before": result.val_loss_start,
        "val_loss_after": result.val_loss_end,
        "train_loss_first_step": result.first_loss,
        "train_loss_last_steps": result.loss,
        "checkpoint": str(result.checkpoint),
        "model_path": str(result.model_path),
        "loss_plot": str(result.plot_path),
        "prompt": options.prompt,
        "sample": text,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "demo.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    log("")
    log(
        f"held-out loss: {result.val_loss_start:.3f} before training -> {result.val_loss_end:.3f} after "
        f"({result.step} steps, {result.tokens:,} tokens, {result.tokens_per_second:,.0f} tokens/s)"
    )
    log(f"sample ({options.sample_tokens} tokens, temperature 0.8, top-p 0.9):")
    log(f"  {options.prompt}{text}")
    log("")
    log(f"checkpoint: {result.checkpoint}  (resume or continue with `eaglefinch train --out {run_dir} ...`)")
    log(f"model:      {result.model_path}  (official RWKV .pth)")
    log(f"loss plot:  {result.plot_path}")
    return report
