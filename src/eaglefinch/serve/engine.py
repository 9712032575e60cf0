"""Continuous batching: one thread runs every active request through one batched decoder.

An RWKV row is a fixed-size state, so requests join and leave the batch between any two steps at
the cost of one copy of their state; nothing is padded and no memory grows with the text. Each
step of the scheduler:

1. drops the rows whose clients went away (their row is freed before the next product);
2. admits waiting requests up to ``max_batch``: each prompt is prefilled alone with the chunked
   kernel, reusing the longest prefix in the ``PrefixCache`` (a shared system prompt, or the
   earlier turns of a chat);
3. picks one token per row (each row with its own sampling settings, seed and penalties);
4. feeds the tokens of all rows to the decoder in one batched step.

A row's tokens are what ``eaglefinch.generate`` gives for its prompt alone: the exact decoder
keeps batch rows independent (``weights="w8a8"`` is the exception: its 7-bit input range spans
the batch). When a request ends on a stop string or its length, its last token is fed in one more
step and the state after the whole exchange goes into the cache, so the next turn of the same
conversation prefills only its new tokens.

The engine talks to the HTTP side through callbacks (``Request.emit``), called on the engine
thread: the server forwards them to its event loop.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from eaglefinch.errors import ConfigError, EaglefinchError
from eaglefinch.generation.context import prefill
from eaglefinch.generation.generate import END_OF_TEXT
from eaglefinch.generation.prefix_cache import PrefixCache
from eaglefinch.generation.sampling import (
    Penalties,
    SamplingConfig,
    ban,
    penalty_weight,
    sample,
)
from eaglefinch.generation.text import TextStream, Tokenizer, undefined_ids
from eaglefinch.model.decode import DecodeModel
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState


@dataclass
class Event:
    """What the engine reports about a request: ``kind`` is "text", "done" or "error"."""

    kind: str
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length" (with "done")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: list[int] | None = None  # with "done": the generated ids (stop token excluded)


@dataclass
class Request:
    """One completion to run.

    Args:
        prompt_tokens: the token ids to continue (at least one).
        max_new_tokens: at most this many generated tokens (0 returns at once).
        sampling: the row's settings; its ``seed`` seeds the row's own generator.
        emit: called on the engine thread with every ``Event`` of this request, the last one
            being "done" or "error".
        stop: strings that end the text (not part of it).
        stop_tokens: ids that end the text (default: end of text).
    """

    prompt_tokens: list[int]
    max_new_tokens: int
    sampling: SamplingConfig
    emit: Callable[[Event], None]
    stop: Sequence[str] = ()
    stop_tokens: Sequence[int] = (END_OF_TEXT,)
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)


class _Row:
    """A running request: its place in the batch is its index in ``Engine._rows``."""

    def __init__(self, request: Request, tokenizer: Tokenizer, vocab_size: int, device: torch.device):
        self.request = request
        cfg = request.sampling
        self.sampling = cfg.replace(seed=None)  # rows sharing these settings are filtered together
        self.generator = (
            torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
        )
        self.penalties = (
            Penalties(1, vocab_size, cfg, penalty_weight(tokenizer.decode_bytes), device=device)
            if cfg.has_penalties
            else None
        )
        self.stream = TextStream(request.stop)
        self.stop_tokens = {int(t) for t in request.stop_tokens}
        self.new_tokens: list[int] = []
        self.closing = False  # finished; its last token is fed once more so its state can be cached

    def done(self, reason: str) -> None:
        tail = self.stream.flush()
        if tail:
            self.request.emit(Event("text", tail))
        self.request.emit(
            Event(
                "done",
                finish_reason=reason,
                prompt_tokens=len(self.request.prompt_tokens),
                completion_tokens=len(self.new_tokens),
                tokens=list(self.new_tokens),
            )
        )


class _BatchStates:
    """The rows' states in one buffer: the batch is a view of its first ``n`` rows.

    A request joining writes its own row and a request leaving is replaced by the last row, so
    each copies one row rather than the whole batch (at 16 rows of Finch L12-D768 the batch's
    states are 37 MB). The buffer doubles when full, up to the largest batch the engine admits.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buffer: RWKVState | None = None
        self.n = 0

    @property
    def state(self) -> RWKVState | None:
        """The batch (views into the buffer: each layer's rows are contiguous), or None when empty."""
        if self.n == 0:
            return None
        return RWKVState(**{name: t[:, : self.n] for name, t in self.buffer.tensors().items()})

    def append(self, state: RWKVState) -> None:
        if self.buffer is None or self.n == self.buffer.batch_size:
            rows = min(self.capacity, max(8, 2 * self.n))  # > n: the engine admits at most capacity
            grown = RWKVState(
                **{name: t.new_zeros(t.shape[0], rows, *t.shape[2:]) for name, t in state.tensors().items()}
            )
            if self.buffer is not None:
                for name, t in grown.tensors().items():
                    t[:, : self.n] = self.buffer.tensors()[name][:, : self.n]
            self.buffer = grown
        for name, t in self.buffer.tensors().items():
            t[:, self.n] = state.tensors()[name][:, 0]
        self.n += 1

    def keep(self, indices: list[int]) -> list[int]:
        """Keep these rows; return their new order (old row indices, row 0 first).

        The rows kept beyond the new batch size fill the places of the rows that leave, so as many
        rows are copied as leave, at most (rows are independent: their order does not matter).
        """
        n, kept = len(indices), set(indices)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in indices if i >= n]
        order = list(range(n))
        for hole, mover in zip(holes, movers, strict=True):
            for t in self.buffer.tensors().values():
                t[:, hole] = t[:, mover]
            order[hole] = mover
        self.n = n
        return order

    def clear(self) -> None:
        self.buffer, self.n = None, 0


@dataclass
class EngineStats:
    steps: int = 0
    tokens_generated: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    max_batch_seen: int = 0


class Engine:
    """The scheduler thread and the batched state of every running request.

    Args:
        model: the model (prefill, with the chunked kernel).
        tokenizer: ``decode_bytes`` for the text and the penalties.
        decoder: the ``DecodeModel`` of ``model`` that runs the steps.
        max_batch: at most this many rows decode together; later requests wait.
        cache: the prefix cache (``None``: no state reuse).
    """

    def __init__(
        self,
        model: RWKV,
        tokenizer: Tokenizer,
        decoder: DecodeModel | None = None,
        *,
        max_batch: int = 32,
        cache: PrefixCache | None = None,
    ):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer = model, tokenizer
        self.decoder = decoder if decoder is not None else DecodeModel(model, fp32_copies=None)
        self.max_batch = max_batch
        self.cache = cache
        self._undefined = undefined_ids(tokenizer, model.config.vocab_size)  # never sampled
        self.stats = EngineStats()
        self._waiting: queue.Queue[Request] = queue.Queue()
        self._rows: list[_Row] = []
        self._states = _BatchStates(max_batch)  # the rows' states, in order
        self._logits: torch.Tensor | None = None  # (B, V) next-token logits of the rows
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the public side (any thread) --------------------------------------------------------

    def start(self) -> Engine:
        """Run the scheduler on a thread of its own (see ``run`` for the faster alternative)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="eaglefinch-engine", daemon=True)
            self._thread.start()
        return self

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Run the scheduler on the calling thread until ``stop()`` or ``should_stop()``.

        On CPU, torch's OpenMP workers belong to the thread that first ran an operator: when a
        second thread computes while the first one's workers are still spinning, small operators
        take up to twice as long (measured: a Finch L12-D768 decode step 23 ms on the loading
        thread, 46 ms on another). ``eaglefinch serve`` therefore decodes on its main thread and
        runs the HTTP server on another.
        """
        self._loop(should_stop)

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, request: Request) -> Request:
        """Queue a request; its events arrive through ``request.emit``."""
        if not request.prompt_tokens:
            raise ConfigError("the prompt is empty: give at least one token")
        if request.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {request.max_new_tokens}")
        V = self.model.config.vocab_size
        bad = [t for t in request.prompt_tokens if not 0 <= t < V]
        if bad:
            raise ConfigError(f"token id {bad[0]} is outside this model's vocabulary [0, {V})")
        self._waiting.put(request)
        self._wake.set()
        return request

    def cancel(self, request: Request) -> None:
        """Forget a request (its client went away); its row is freed before the next step."""
        request.cancelled = True
        self._wake.set()

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    # -- the engine thread --------------------------------------------------------------------

    def _loop(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        with torch.inference_mode():
            while not self._stopping and not should_stop():
                if not self._rows and self._waiting.empty():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as error:  # never leave clients waiting on a dead thread
                    self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        message = str(error) if isinstance(error, EaglefinchError) else f"internal error: {error!r}"
        for row in self._rows:
            row.request.emit(Event("error", message))
        self._rows, self._logits = [], None
        self._states.clear()

    def _keep(self, indices: list[int]) -> list[int]:
        """Keep these rows (ascending); return the new order of the rows (their old indices)."""
        if len(indices) == len(self._rows):
            return indices
        order = self._states.keep(indices)
        self._rows = [self._rows[i] for i in order]
        self._logits = self._logits[order] if order else None
        return order

    def _drop_cancelled(self) -> None:
        keep = [i for i, row in enumerate(self._rows) if not row.request.cancelled]
        self.stats.requests_cancelled += len(self._rows) - len(keep)
        self._keep(keep)

    def _admit(self) -> None:
        V = self.model.config.vocab_size
        while len(self._rows) < self.max_batch:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            if request.cancelled:
                self.stats.requests_cancelled += 1
                continue
            try:
                context = prefill(self.model, request.prompt_tokens, cache=self.cache, decoder=self.decoder)
            except EaglefinchError as error:
                request.emit(Event("error", str(error)))
                continue
            row = _Row(request, self.tokenizer, V, self.decoder.device)
            if request.max_new_tokens == 0:
                row.done("length")
                self.stats.requests_finished += 1
                continue
            state = context.state.to(self.decoder.device)
            logits = context.logits.to(self.decoder.device)
            self._rows.append(row)
            self._states.append(state)
            self._logits = logits if self._logits is None else torch.cat([self._logits, logits])
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(self._rows))

    def _pick(self) -> list[int | None]:
        """One token per row (``None`` for closing rows, which feed their last token instead)."""
        tokens: list[int | None] = [None] * len(self._rows)
        groups: dict[SamplingConfig, list[int]] = {}
        for j, row in enumerate(self._rows):
            if not row.closing:
                groups.setdefault(row.sampling, []).append(j)
        for cfg, rows in groups.items():
            scores = self._logits[rows]  # a copy (indexed by a list): the rows' logits stay as they are
            if any(self._rows[j].penalties is not None for j in rows):
                scores = torch.cat(
                    [
                        self._rows[j].penalties.apply(scores[i : i + 1])
                        if self._rows[j].penalties is not None
                        else scores[i : i + 1]
                        for i, j in enumerate(rows)
                    ]
                )
            scores = ban(scores, (*cfg.banned_tokens, *self._undefined))
            picked = sample(scores, cfg, [self._rows[j].generator for j in rows]).tolist()
            for j, token in zip(rows, picked, strict=True):
                tokens[j] = token
        return tokens

    def _cache_row(self, j: int) -> None:
        if self.cache is None:
            return
        row = self._rows[j]
        self.cache.insert(
            self.model,
            row.request.prompt_tokens + row.new_tokens,
            self._states.state.select(j).to(self.model.device),
            self._logits[j : j + 1],
        )

    def _step(self) -> None:
        tokens = self._pick()
        keep: list[int] = []
        feed: list[int] = []
        for j, (row, token) in enumerate(zip(self._rows, tokens, strict=True)):
            if row.closing:  # fed last step: its state now follows the whole exchange
                self._cache_row(j)
                continue
            if row.request.cancelled:
                self.stats.requests_cancelled += 1
                continue
            if token in row.stop_tokens:
                self._cache_row(j)
                row.done("stop")
                self.stats.requests_finished += 1
                continue
            row.new_tokens.append(token)
            self.stats.tokens_generated += 1
            if row.penalties is not None:
                row.penalties.update([token])
            piece = row.stream.push(self.tokenizer.decode_bytes([token]))
            if piece:
                row.request.emit(Event("text", piece))
            finished = None
            if row.stream.stopped:
                finished = "stop"
            elif len(row.new_tokens) >= row.request.max_new_tokens:
                finished = "length"
            if finished is not None:
                row.done(finished)
                self.stats.requests_finished += 1
                if self.cache is None:
                    continue
                row.closing = True
            keep.append(j)
            feed.append(token)
        token_of = dict(zip(keep, feed, strict=True))
        order = self._keep(keep)
        if not self._rows:
            return
        step_tokens = torch.tensor([token_of[i] for i in order], dtype=torch.long, device=self.decoder.device)
        self._logits = self.decoder.step(step_tokens, self._states.state)
        self.stats.steps += 1
