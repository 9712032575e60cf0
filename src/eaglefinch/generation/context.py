"""A processed prompt, ready to continue: the recurrent state, the next-token logits, the tokens seen.

An RNN's memory of a prompt is a constant-size state, so a long prompt is processed once
(``prefill``) and the resulting ``Context`` can be continued many times, forked into several
continuations, saved to a file (``eaglefinch.generation.states``) or kept in a ``PrefixCache``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from eaglefinch.errors import ConfigError, StateError
from eaglefinch.generation.prefix_cache import PrefixCache
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState

if TYPE_CHECKING:
    from eaglefinch.model.decode import DecodeModel

# Prefill runs the model on pieces of at most this many tokens (a multiple of the WKV chunk, 64),
# which bounds the activation memory of very long prompts without changing the result.
PREFILL_PIECE = 4096


@dataclass
class Context:
    """The model's memory after some tokens, one row per sequence.

    Attributes:
        state: the recurrent state after ``tokens`` (B rows).
        logits: (B, V) float32 logits for the token after ``tokens``; ``None`` only before any token.
        tokens: per row, every token the state has seen, from the model's initial state.
    """

    state: RWKVState
    logits: torch.Tensor | None
    tokens: list[list[int]]

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def clone(self) -> Context:
        logits = None if self.logits is None else self.logits.clone()
        return Context(self.state.clone(), logits, [list(t) for t in self.tokens])

    def select(self, rows: int | Sequence[int]) -> Context:
        """Some rows (an int keeps a batch of one)."""
        rows = [rows] if isinstance(rows, int) else list(rows)
        logits = None if self.logits is None else self.logits[rows].clone()
        return Context(self.state.select(rows), logits, [list(self.tokens[r]) for r in rows])

    def fork(self, n: int) -> Context:
        """``n`` independent copies of a one-row context: several continuations of one prompt."""
        if self.batch_size != 1:
            raise StateError(
                f"fork() copies a one-row context; this one has {self.batch_size} rows (select one)"
            )
        logits = None if self.logits is None else self.logits.expand(n, -1).clone()
        return Context(self.state.repeat(n), logits, [list(self.tokens[0]) for _ in range(n)])

    @classmethod
    def cat(cls, contexts: Sequence[Context]) -> Context:
        """Rows of several contexts (of one model) in one batch."""
        if not contexts:
            raise StateError("cat() needs at least one context")
        if any(c.logits is None for c in contexts) and not all(c.logits is None for c in contexts):
            raise StateError("cannot batch contexts that have seen tokens with ones that have not")
        logits = None if contexts[0].logits is None else torch.cat([c.logits for c in contexts])
        return cls(
            RWKVState.cat([c.state for c in contexts]), logits, [list(t) for c in contexts for t in c.tokens]
        )

    @classmethod
    def empty(cls, model: RWKV, batch_size: int = 1) -> Context:
        """Before any token: the model's initial state, no logits yet."""
        return cls(model.zero_state(batch_size), None, [[] for _ in range(batch_size)])


def _products(model: RWKV, decoder: DecodeModel | None):
    """The context that runs the model's products through the decoder's packed matrices, if any."""
    return contextlib.nullcontext() if decoder is None else decoder.products_for(model)


def _run(
    model: RWKV, rows: Sequence[Sequence[int]], state: RWKVState | None, decoder: DecodeModel | None
) -> tuple[torch.Tensor, RWKVState]:
    """Feed ``rows`` (token lists of one length) in pieces; return (last logits (B, V), state)."""
    logits = None
    with _products(model, decoder):
        for start in range(0, len(rows[0]), PREFILL_PIECE):
            piece = torch.tensor(
                [row[start : start + PREFILL_PIECE] for row in rows], dtype=torch.long, device=model.device
            )
            out, state = model(piece, state, last_only=True)
            logits = out[:, -1]
    return logits, state


@torch.no_grad()
def prefill(
    model: RWKV,
    tokens: Sequence[int],
    context: Context | None = None,
    *,
    cache: PrefixCache | None = None,
    decoder: DecodeModel | None = None,
) -> Context:
    """Process ``tokens`` (after ``context``, if given) and return the one-row context after them.

    The model's default WKV mode runs the prompt through the chunked kernel. With a ``cache``, the
    longest cached prefix of the whole token history is reused, and states along the way are stored
    (every ``cache.stride`` tokens and at the end) for later prompts sharing a prefix. With the
    ``decoder`` that will continue the text, the prompt's products use its packed matrices where
    they hold the model's weights (``DecodeModel.products_for``): faster, equal to rounding.
    """
    if context is None:
        context = Context.empty(model)
    if context.batch_size != 1:
        raise StateError(f"prefill() continues a one-row context; this one has {context.batch_size} rows")
    tokens = [int(t) for t in tokens]
    history = context.tokens[0] + tokens
    state, logits, done = context.state, context.logits, len(context.tokens[0])
    if cache is not None:
        hit = cache.lookup(model, history)
        if hit is not None and hit.length > done:
            state, logits, done = hit.state, hit.logits, hit.length
    if done == len(history):
        if logits is None:
            raise ConfigError("nothing to process: the prompt is empty and there is no earlier context")
        return Context(state.clone(), logits.clone(), [history])
    if cache is None:
        logits, state = _run(model, [history[done:]], state, decoder)
    else:
        # stop at every multiple of the stride, so that prompts sharing a prefix find a state there
        cuts = list(range((done // cache.stride + 1) * cache.stride, len(history), cache.stride)) + [
            len(history)
        ]
        for cut in cuts:
            logits, state = _run(model, [history[done:cut]], state, decoder)
            done = cut
            cache.insert(model, history[:cut], state, logits)
    return Context(state.clone() if cache is not None else state, logits.clone(), [history])


@torch.no_grad()
def prefill_batch(
    model: RWKV,
    token_lists: Sequence[Sequence[int]],
    *,
    cache: PrefixCache | None = None,
    decoder: DecodeModel | None = None,
) -> Context:
    """One context row per prompt, each exactly what the prompt gives alone (``decoder``: as for
    ``prefill``).

    Prompts of equal length are run together as one batch (no padding is ever needed); with a
    cache, each prompt goes through ``prefill`` on its own to reuse cached prefixes.
    """
    if not token_lists:
        raise ConfigError("no prompts given")
    rows: list[Context | None] = [None] * len(token_lists)
    if cache is not None:
        for i, tokens in enumerate(token_lists):
            rows[i] = prefill(model, tokens, cache=cache, decoder=decoder)
        return Context.cat(rows)
    groups: dict[int, list[int]] = {}
    for i, tokens in enumerate(token_lists):
        if len(tokens) == 0:
            raise ConfigError(f"prompt {i} is empty: give at least one token (or a context to continue)")
        groups.setdefault(len(tokens), []).append(i)
    for indices in groups.values():
        batch = [list(map(int, token_lists[i])) for i in indices]
        logits, state = _run(model, batch, None, decoder)
        for j, i in enumerate(indices):
            rows[i] = Context(state.select(j), logits[j : j + 1].clone(), [batch[j]])
    return Context.cat(rows)
