"""The training loop: the official recipe, exact resume, one or many processes.

``train(TrainConfig(...), model_config)`` trains on a binidx corpus and writes, under ``out``::

    checkpoints/        atomic checkpoints (see ``checkpointing``); a rerun resumes from the latest
    metrics.jsonl       one record per step (loss, lr, grad norm, tokens/s) and per evaluation
    loss.png            the loss curve, drawn at the end
    model.pth           the final weights, official RWKV-LM format
    run.json            the options of the run and its outcome

A step draws one global batch of ``batch_size * processes * grad_accum`` windows; its samples are
fixed by the seed and the step alone, so N steps straight and N/2 + resume + N/2 give the same
weights bit for bit (CPU, fp32), and one process with the same global batch matches many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from eaglefinch.checkpoint import check_state_dict, model_from_state_dict, read_state_dict, save_state_dict
from eaglefinch.config import RWKVConfig, infer_config
from eaglefinch.errors import CheckpointError, ConfigError
from eaglefinch.finetune import methods
from eaglefinch.finetune.data import IGNORE, ExampleBatches, is_example_file, read_examples
from eaglefinch.finetune.frozen import CHOICES as FROZEN_CHOICES
from eaglefinch.model.rwkv import RWKV
from eaglefinch.train import distributed as D
from eaglefinch.train.binidx import BinidxReader
from eaglefinch.train.checkpointing import latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from eaglefinch.train.chunked_loss import chunked_head_loss
from eaglefinch.train.metrics import MetricsLog, plot_loss
from eaglefinch.train.optim import make_optimizer, set_lr
from eaglefinch.train.sampler import TokenWindows
from eaglefinch.train.schedule import KINDS, Schedule

PRECISIONS = ("auto", "fp32", "bf16")
METHODS = ("full", "lora", "state")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Options of a training run (the model's sizes come separately, as an ``RWKVConfig``)."""

    data: str  # binidx prefix (PREFIX.bin + PREFIX.idx)
    out: str  # run folder
    ctx_len: int = 512
    batch_size: int = 8  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimiser step
    steps: int | None = None  # optimiser steps in the whole run (the schedule's length)
    seconds: float | None = None  # or a time budget for the whole run
    stop_at: int | None = None  # end this session at this step (with a checkpoint); the schedule is unchanged
    lr: float = 6e-4
    lr_final: float = 6e-5
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | exp | constant
    weight_decay: float = 0.1  # on matrices only (see optim)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    l2wrap: float = 1e-4  # RWKV-LM's L2Wrap: pull each position's largest logit towards 0
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto: bf16 on GPUs that support it, else fp32
    device: str = "auto"
    strategy: str = "ddp"  # ddp | fsdp, with several processes
    seed: int = 0
    init_from: str | None = None  # start from these weights (official .pth / .safetensors)
    resume: bool = True  # continue from out/checkpoints/latest.json when it exists
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep: int = 2  # checkpoints kept (0: all)
    log_every: int = 1
    val_tokens: int = 0  # held out (random windows); evaluated at the start, the end, every eval_every
    eval_every: int = 0
    eval_batches: int = 16
    threads: int | None = None  # torch CPU threads
    progress: bool = True
    plot: bool = True
    # fine-tuning (see eaglefinch.finetune): what is trained, and how examples are read
    method: str = "full"  # full: every weight | lora: peft adapters | state: the initial state only
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()  # () = every time-mix and channel-mix projection
    tune_shift: bool = False  # state tuning also learns the two token-shift vectors
    mask_prompt: bool = True  # chat examples: loss on the assistant's replies only
    # lora/state: the frozen weights' storage (finetune.frozen): auto keeps them in 16 bits where
    # that is lossless (a bf16 checkpoint's), fp32 keeps them as loaded, bf16/fp16 round them
    frozen_dtype: str = "auto"
    # memory (see RWKV.set_grad_checkpointing and LossModule.head_chunk)
    grad_cp: bool = False  # recompute each block's activations in the backward
    head_chunk: int = 0  # tokens per piece of the head and loss (0: all at once)

    def __post_init__(self) -> None:
        positive = {
            "ctx_len": self.ctx_len,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "log_every": self.log_every,
            "eval_batches": self.eval_batches,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.steps is None and self.seconds is None:
            raise ConfigError("give the run's length: steps, seconds (or both)")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError(f"seconds must be > 0, got {self.seconds}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.schedule not in KINDS:
            raise ConfigError(f"unknown schedule {self.schedule!r}: use one of {', '.join(KINDS)}")
        if self.grad_clip < 0 or self.l2wrap < 0 or self.val_tokens < 0 or self.save_every < 0:
            raise ConfigError("grad_clip, l2wrap, val_tokens and save_every must be >= 0")
        if self.eval_every < 0 or self.keep < 0:
            raise ConfigError("eval_every and keep must be >= 0")
        if self.eval_every and not self.val_tokens:
            raise ConfigError("eval_every needs held-out data: set val_tokens")
        Schedule(self.lr, self.lr_final, self.warmup_steps, self.schedule)  # validates the schedule
        if not isinstance(self.head_chunk, int) or self.head_chunk < 0:
            raise ConfigError(f"head_chunk must be an integer >= 0, got {self.head_chunk!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.method != "full" and not self.init_from:
            raise ConfigError(f"--method {self.method} fine-tunes a model: give the checkpoint (--model)")
        if self.frozen_dtype not in FROZEN_CHOICES:
            raise ConfigError(
                f"unknown frozen_dtype {self.frozen_dtype!r}: use one of {', '.join(FROZEN_CHOICES)}"
            )
        if self.strategy not in D.STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: use one of {', '.join(D.STRATEGIES)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    out: Path
    step: int
    tokens: int
    loss: float | None  # mean training loss of the last logged steps
    first_loss: float | None
    val_loss_start: float | None
    val_loss_end: float | None
    checkpoint: Path | None
    model_path: Path | None
    plot_path: Path | None
    metrics_path: Path
    seconds: float
    tokens_per_second: float


class _L2Wrap(torch.autograd.Function):
    """Identity on logits whose backward adds ``factor * max_logit`` at each position's argmax.

    RWKV-LM adds this gradient (its ``L2Wrap``) to keep logits from drifting upwards; it is the
    gradient of factor/2 * max_logit^2. Added into the incoming gradient, it needs no extra
    buffer of the logits' size.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, factor: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        top, ids = logits.detach().max(dim=-1, keepdim=True)
        if mask is not None:  # only these positions (B, T) are pulled
            top = top * mask.unsqueeze(-1).to(top.dtype)
        ctx.save_for_backward(top, ids)
        ctx.factor = factor
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        top, ids = ctx.saved_tensors
        # The incoming gradient is the cross-entropy's fresh buffer (possibly seen through a view)
        # and has no other reader, so it is updated in place; a non-contiguous one is copied.
        grad = grad if grad.is_contiguous() else grad.contiguous()
        grad.scatter_add_(-1, ids, (top * ctx.factor).to(grad.dtype))
        return grad, None, None


class LossModule(nn.Module):
    """The model plus its loss: what DDP / FSDP wrap (they need the loss inside ``forward``)."""

    def __init__(
        self,
        model: nn.Module,
        l2wrap: float = 0.0,
        initial_state: nn.Module | None = None,
        head_chunk: int = 0,
    ):
        super().__init__()
        self.model = model  # an RWKV, or a peft model around one
        self.l2wrap = l2wrap
        self.initial_state = initial_state  # state tuning: the trainable state every row starts from
        # > 0: the head and the loss run this many tokens at a time, recomputed in the backward, so
        # the (B, T, vocabulary) logits and their gradient never exist whole
        self.head_chunk = head_chunk

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        l2_scale: float = 1.0,
        denominator: float | None = None,
    ) -> torch.Tensor:
        """Cross-entropy of ``targets`` [B, T] (IGNORE = -100 entries skipped): their mean, or their
        sum over ``denominator``; ``l2_scale`` divides the L2Wrap term like the loss."""
        state = None if self.initial_state is None else self.initial_state(inputs.shape[0])
        if self.head_chunk and torch.is_grad_enabled():
            return self._chunked_loss(inputs, targets, state, l2_scale, denominator)
        logits, _ = self.model(inputs, state)  # (B, T, V) float32
        return self.loss_from_logits(logits, targets, l2_scale, denominator)

    def _chunked_loss(self, inputs, targets, state, l2_scale: float, denominator: float | None):
        """``loss_from_logits`` of the model's logits, computed ``head_chunk`` tokens at a time."""
        hidden, _ = self.model.forward_hidden(inputs, state)  # peft passes the attribute through
        head = self.model.head
        B, T = targets.shape
        if denominator is None:  # the mean over the trained targets, as F.cross_entropy takes it
            mean_of = int((targets != IGNORE).sum())
            if mean_of == 0:
                return hidden.sum() * 0.0
            factor = self.l2wrap / (B * T) * l2_scale
        else:
            mean_of, factor = denominator, self.l2wrap / denominator * l2_scale

        # The model's head is a bias-free nn.Linear (peft never targets it): fused with the loss
        pulled = None if denominator is None else targets != IGNORE
        return chunked_head_loss(hidden, head.weight, targets, self.head_chunk, factor, pulled) / mean_of

    def loss_from_logits(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        l2_scale: float = 1.0,
        denominator: float | None = None,
    ) -> torch.Tensor:
        """Cross-entropy of logits (B, T, V) against targets (B, T), with L2Wrap while training.

        Masked batches hold different numbers of trained targets, so a mean per micro-batch would
        weigh tokens unequally across micro-batches and processes; the loop passes instead the
        step's trained-target count per micro-batch as ``denominator``, making every token count
        the same wherever it falls (and one process match many).
        """
        if self.l2wrap and torch.is_grad_enabled():
            if denominator is None:
                B, T = targets.shape
                logits = _L2Wrap.apply(logits, self.l2wrap / (B * T) * l2_scale)
            else:  # on the trained positions only, so that padding changes nothing
                logits = _L2Wrap.apply(logits, self.l2wrap / denominator * l2_scale, targets != IGNORE)
        flat, logits = targets.reshape(-1), logits.reshape(-1, logits.shape[-1])
        if denominator is not None:
            return F.cross_entropy(logits, flat, reduction="sum") / denominator
        if not torch.compiler.is_compiling() and bool((flat == IGNORE).all()):
            return logits.sum() * 0.0  # nothing to learn here (every target masked): zero, not NaN
        return F.cross_entropy(logits, flat)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use --precision fp32")
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def open_data(config: TrainConfig):
    """Training samples: windows of a binidx corpus, or the examples of a .txt / .jsonl file."""
    if is_example_file(config.data):
        from eaglefinch.tokenizer import WorldTokenizer

        examples = read_examples(
            config.data, WorldTokenizer(), config.ctx_len, mask_prompt=config.mask_prompt
        )
        batches = ExampleBatches(examples, config.ctx_len, seed=config.seed, val_tokens=config.val_tokens)
        log.info("%s: %s", config.data, batches.describe())
        return batches
    corpus = BinidxReader(config.data)
    return TokenWindows(corpus.tokens, config.ctx_len, seed=config.seed, val_tokens=config.val_tokens)


def check_vocabulary(windows, model_config: RWKVConfig, data: str) -> None:
    if isinstance(windows, ExampleBatches):
        top = max(int(e.tokens.max()) for e in windows.examples)
        if top >= model_config.vocab_size:
            raise ConfigError(
                f"{data} is tokenised with the World vocabulary (ids up to {top}), but the model has "
                f"{model_config.vocab_size} tokens: fine-tune a World-vocabulary model"
            )


def describe(config: RWKVConfig) -> str:
    return f"{config.arch} L{config.n_layer}-D{config.n_embd} (V{config.vocab_size})"


def _same_model(a: RWKVConfig, b: RWKVConfig) -> bool:
    return a.to_dict() == b.to_dict()


def _model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names from a (DDP-wrapped) LossModule's state dict: drop 'module.' and 'model.'."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("model.")
        out[key] = value
    return out


def build_model(
    config: TrainConfig,
    model_config: RWKVConfig | None,
    resume_state: dict | None,
    resume_config: RWKVConfig | None,
) -> RWKV:
    """The model to train: from the checkpoint being resumed, from ``init_from``, or freshly initialised."""
    if resume_config is not None:
        if model_config is not None and not _same_model(model_config, resume_config):
            raise CheckpointError(
                f"{config.out} holds a checkpoint of a {describe(resume_config)} model, but this run "
                f"asks for "
                f"a {describe(model_config)}; use another --out, the same model options, or --no-resume"
            )
        model = RWKV(resume_config, init=False)
        model.load_state_dict(resume_state)
        return model
    if config.init_from:
        weights = read_state_dict(config.init_from)
        found = infer_config(weights)
        check_state_dict(weights, found)
        if model_config is not None and not _same_model(model_config, found):
            raise CheckpointError(
                f"{config.init_from} is a {describe(found)} checkpoint, but this run asks for a "
                f"{describe(model_config)}; drop the model options to train the checkpoint as it is"
            )
        # one tensor at a time: a float32 copy of the whole checkpoint beside the model would
        # double the peak of loading a bf16 checkpoint
        model = model_from_state_dict(weights, dtype=torch.float32)
        del weights
        return model.train()
    if model_config is None:
        raise ConfigError("choose a model: a preset, explicit sizes, or --init-from a checkpoint")
    torch.manual_seed(config.seed)
    return RWKV(model_config)


@torch.no_grad()
def evaluate(
    module: nn.Module,
    windows: TokenWindows,
    batch_size: int,
    max_batches: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> float:
    """Mean loss per token over the held-out windows."""
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    for inputs, targets in windows.val_batches(batch_size, max_batches):
        with _autocast(device, amp):
            loss = module(inputs.to(device), targets.to(device))
        trained = int((targets != IGNORE).sum())  # padding and prompts of chat examples carry no loss
        total += loss.item() * trained
        count += trained
    module.train(was_training)
    return total / max(count, 1)


def train(config: TrainConfig, model_config: RWKVConfig | None = None) -> TrainResult:
    """Train (or continue training) a model; see the module docstring for what is written where."""
    if config.threads:
        torch.set_num_threads(config.threads)
    info = D.init_distributed(config.device)
    try:
        return _train(config, model_config, info)
    finally:
        D.cleanup(info)


def _train(config: TrainConfig, model_config: RWKVConfig | None, info: D.DistInfo) -> TrainResult:
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(info)
    device = info.device
    amp = resolve_precision(config.precision, device)

    windows = open_data(config)
    full = config.method == "full"

    resume = latest_checkpoint(ckpt_dir) if config.resume else None
    train_state = resume.train_state() if resume else None
    if resume is not None and resume.method != config.method:
        raise CheckpointError(
            f"{resume.dir} is a checkpoint of a --method {resume.method} run, not {config.method}; "
            "resume it with the same method, or use another --out"
        )
    resume_weights = resume.model_state_dict() if resume and full else None
    resume_config = infer_config(resume_weights) if resume_weights else None
    model = build_model(config, model_config, resume_weights, resume_config)
    del resume_weights
    model_config = model.config
    check_vocabulary(windows, model_config, config.data)
    model.to(device)
    model.set_grad_checkpointing(config.grad_cp)
    torch.manual_seed(config.seed)  # peft draws the LoRA A matrices from the global generator
    adapted = methods.adapt(model, config.method, config)
    identity = None if full else methods.base_identity(model)
    if resume is not None and not full:
        methods.check_base(resume.meta().get("base"), model, str(out), config.init_from)
    layout = config.strategy if info.distributed else "ddp"  # how the optimizer state is keyed
    if not full:  # after the base's identity is taken: it fingerprints the weights as loaded
        stored = methods.store_frozen_weights(adapted, config.frozen_dtype, sharded=layout == "fsdp")
        if stored and info.is_main:
            log.info(
                "frozen weights stored as %s, computed in %s", stored, str(model.dtype).removeprefix("torch.")
            )
    if train_state is not None and train_state.get("strategy", "ddp") != layout:
        raise CheckpointError(
            f"{resume.dir} was written by an FSDP run; resume it with torchrun and --strategy fsdp"
            if train_state.get("strategy") == "fsdp"
            else f"{resume.dir} was written without FSDP; resume it with --strategy ddp"
        )

    loss_module = LossModule(adapted.model, config.l2wrap, adapted.initial_state, config.head_chunk)
    loss_module.to(device)
    if resume is not None and not full:
        methods.load_trainable(loss_module, resume.trainable_state(), resume.dir)
    trainable = set(methods.trainable_names(loss_module))
    module = D.wrap(loss_module, info, config.strategy, blocks=model.blocks)
    module.train()
    optimizer = make_optimizer(
        module, config.lr, weight_decay=config.weight_decay, betas=config.betas, eps=config.eps
    )
    schedule = Schedule(config.lr, config.lr_final, config.warmup_steps, config.schedule)

    step, samples, elapsed_before = 0, 0, 0.0
    if train_state is not None:
        D.load_optimizer_state(module, optimizer, train_state["optimizer"], config.strategy, info)
        step, samples = int(train_state["step"]), int(train_state["samples"])
        elapsed_before = float(train_state.get("elapsed", 0.0))
        set_rng_state(train_state["rng"])
    start_step = step
    if info.is_main:
        if resume is not None:
            log.info(
                "resuming from %s (step %d, %s tokens)",
                resume.dir,
                step,
                f"{windows.tokens_before(samples):,}",
            )
            if config.init_from and full:
                log.info("--init-from is ignored: the run continues from its own checkpoint")
        log.info(
            "%s, %s parameters (%s trained, method %s); %s tokens per step (%d processes)",
            describe(model_config),
            f"{model.num_parameters():,}",
            f"{sum(p.numel() for p in loss_module.parameters() if p.requires_grad):,}",
            config.method,
            f"{config.batch_size * info.world_size * config.grad_accum * config.ctx_len:,}",
            info.world_size,
        )
    if info.is_main:
        (out / "run.json").write_text(
            json.dumps(
                {
                    "train": config.to_dict(),
                    "model": model_config.to_dict(),
                    "processes": info.world_size,
                    "base": identity,
                },
                indent=1,
            ),
            encoding="utf-8",
        )

    global_batch = config.batch_size * info.world_size * config.grad_accum
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step if resume else None) if info.is_main else None
    total_steps = config.steps
    last_step = total_steps if config.stop_at is None else min(config.stop_at, total_steps or config.stop_at)

    val_start = None
    if config.val_tokens and step == 0:
        val_start = evaluate(module, windows, config.batch_size, config.eval_batches, device, amp)
        if metrics is not None:
            metrics.write({"kind": "eval", "step": step, "tokens": 0, "val_loss": val_start})

    bar = None
    if info.is_main and config.progress:
        if total_steps is not None:
            bar = tqdm(total=total_steps, initial=step, unit="step", desc="training", dynamic_ncols=True)
        else:
            bar = tqdm(
                total=round(config.seconds),
                initial=min(round(elapsed_before), round(config.seconds)),
                unit="s",
                desc="training",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]",
            )

    started = time.perf_counter()
    session_tokens = 0
    first_loss = last_loss = None
    recent: list[float] = []
    checkpoint_path = None

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def progress() -> float:
        parts = []
        if total_steps is not None:
            parts.append((step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1))
        if config.seconds is not None:
            parts.append(elapsed() / config.seconds)
        return max(parts)

    def finished() -> bool:
        if last_step is not None and step >= last_step:
            return True
        if config.seconds is None:
            return False
        done = torch.tensor(float(elapsed() >= config.seconds))
        if info.distributed:  # clocks differ between processes: stop together, on rank 0's word
            done = D.broadcast_tensor(done.to(device), info).cpu()
        return bool(done.item())

    def save() -> tuple[Path | None, dict | None]:
        """Checkpoint (rank 0 writes); returns the checkpoint folder and the full model state on rank 0."""
        model_state, optim_state = D.full_state_dicts(module, optimizer, config.strategy, info)
        if full:
            model_state = _model_keys(model_state)
        else:  # only the trainable tensors: the base is the --model checkpoint
            model_state = {
                methods.strip_wrapper(k): v
                for k, v in model_state.items()
                if methods.strip_wrapper(k) in trainable
            }
        path = None
        if info.is_main:
            state = {
                "step": step,
                "samples": samples,
                "tokens": windows.tokens_before(samples),
                "optimizer": optim_state,
                "rng": rng_state(),
                "elapsed": elapsed(),
                "strategy": layout,
                "schedule": dataclasses.asdict(schedule),
                "total_steps": total_steps,
                "world_size": info.world_size,
            }
            meta = {
                "tokens": windows.tokens_before(samples),
                "loss": last_loss,
                "model": model_config.to_dict(),
                "train": config.to_dict(),
                "method": config.method,
                "base": identity,
            }
            weights_file = "model.pth" if full else methods.TRAINABLE_FILE
            path = save_checkpoint(
                ckpt_dir, step, model_state, state, meta, keep=config.keep, weights_file=weights_file
            ).dir
        D.barrier(info)
        return path, model_state if info.is_main else None

    while not finished():
        lr = schedule(step, progress())
        set_lr(optimizer, lr)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        denominator = None
        if isinstance(windows, ExampleBatches):  # see LossModule.loss_from_logits
            trained = windows.trained_targets(samples, global_batch)
            denominator = max(trained, 1) / (info.world_size * config.grad_accum)
        for micro in range(config.grad_accum):
            first = samples + (micro * info.world_size + info.rank) * config.batch_size
            inputs, targets = windows.batch(first, config.batch_size)
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            sync = micro == config.grad_accum - 1 or config.strategy != "ddp" or not info.distributed
            with contextlib.nullcontext() if sync else module.no_sync():
                with _autocast(device, amp):
                    loss = module(inputs, targets, 1.0 / config.grad_accum, denominator)
                (loss / config.grad_accum).backward()
            loss_sum += loss.detach()
        if config.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in module.parameters() if p.grad is not None]
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_tokens = windows.tokens_before(samples + global_batch) - windows.tokens_before(samples)
        samples += global_batch
        session_tokens += step_tokens
        step_loss = D.mean_across(loss_sum / config.grad_accum, info).item()
        if not math.isfinite(step_loss):
            raise ConfigError(
                f"the loss became {step_loss} at step {step}; lower --lr or use --precision fp32"
            )
        first_loss = step_loss if first_loss is None else first_loss
        last_loss = step_loss
        recent = (recent + [step_loss])[-20:]
        dt = time.perf_counter() - t0
        if metrics is not None and (step % config.log_every == 0 or step == 1):
            grad_norm_value = float(
                grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            )
            metrics.write(
                {
                    "kind": "train",
                    "step": step,
                    "tokens": windows.tokens_before(samples),
                    "loss": step_loss,
                    "lr": lr,
                    "grad_norm": grad_norm_value,
                    "tokens_per_s": step_tokens / dt,
                    "elapsed": round(elapsed(), 3),
                    "epoch": round(windows.epoch_of(samples), 4),
                }
            )
        if bar is not None:
            if total_steps is not None:
                bar.update(1)
            else:
                bar.update(min(round(elapsed()), bar.total) - bar.n)
            bar.set_postfix(
                loss=f"{sum(recent) / len(recent):.3f}",
                tok_s=f"{session_tokens / (time.perf_counter() - started):,.0f}",
                lr=f"{lr:.2e}",
                refresh=False,
            )
        if config.eval_every and step % config.eval_every == 0:
            val = evaluate(module, windows, config.batch_size, config.eval_batches, device, amp)
            if metrics is not None:
                metrics.write(
                    {"kind": "eval", "step": step, "tokens": windows.tokens_before(samples), "val_loss": val}
                )
        if config.save_every and step % config.save_every == 0 and not finished():
            save()
    if bar is not None:
        bar.close()

    seconds = time.perf_counter() - started
    final_state = None
    if step > start_step or resume is None:
        checkpoint_path, final_state = save()
    elif info.is_main:  # nothing trained in this session: the latest checkpoint is the result
        checkpoint_path = resume.dir
        final_state = _model_keys(resume.model_state_dict()) if full else resume.trainable_state()
    val_end = None
    if config.val_tokens:
        val_end = evaluate(module, windows, config.batch_size, config.eval_batches, device, amp)
        if metrics is not None:
            metrics.write(
                {"kind": "eval", "step": step, "tokens": windows.tokens_before(samples), "val_loss": val_end}
            )
    model_path = plot_path = None
    if info.is_main:
        if full:
            model_path = out / "model.pth"
            save_state_dict(final_state, model_path)
        else:  # the adapter folder or the state file
            model_path = methods.write_result(out, config.method, adapted, final_state)
        metrics.close()
        if config.plot:
            plot_path = plot_loss(out / "metrics.jsonl", out / "loss.png", title=f"{describe(model_config)}")
    D.barrier(info)
    result = TrainResult(
        out=out,
        step=step,
        tokens=windows.tokens_before(samples),
        loss=sum(recent) / len(recent) if recent else None,
        first_loss=first_loss,
        val_loss_start=val_start,
        val_loss_end=val_end,
        checkpoint=checkpoint_path,
        model_path=model_path,
        plot_path=plot_path,
        metrics_path=out / "metrics.jsonl",
        seconds=seconds,
        tokens_per_second=session_tokens / seconds if seconds > 0 else 0.0,
    )
    if info.is_main:
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        run["result"] = {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()
        }
        (out / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
    return result
