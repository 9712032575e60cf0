"""Log-likelihoods of token sequences under an Eagle/Finch model, the RNN way.

Two primitives, shared by the lm-eval adapter, ``eval bpb`` and ``eval ppl``:

* ``score_continuations``: one context, several continuations. The context runs once; its state is
  forked (``RWKVState.repeat``) into one row per continuation, and only the continuations run in a
  batch. A transformer has to re-read the context for every choice (or keep a KV cache that grows
  with it); the RNN's state is a fixed-size summary, so forking it is a copy of ``66*C*L`` numbers.
* ``TokenScorer``: next-token log-likelihood of an arbitrarily long stream, fed in pieces, with the
  state carried across pieces, so memory stays bounded and nothing is truncated.

Logits are computed only where a token is scored (``model.forward_hidden`` then ``model.head`` on
the positions needed): the head is the largest matrix of a small model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eaglefinch.errors import ConfigError
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState

END_OF_TEXT = 0  # the World vocabulary's end-of-text id: documents are separated by it in training


@dataclass(frozen=True)
class ContinuationScore:
    """Sum of the continuation's token log-probabilities (nats) and whether greedy decoding gives it."""

    logprob: float
    is_greedy: bool
    num_tokens: int


@torch.no_grad()
def run_tokens(
    model: RWKV, tokens: Sequence[int], state: RWKVState | None = None, chunk_len: int = 1024
) -> RWKVState:
    """Feed ``tokens`` (batch of one) in pieces of ``chunk_len``; return the state after the last one.

    No logits are computed. An empty ``tokens`` returns ``state`` (or a fresh one) unchanged.
    """
    if state is None:
        state = model.zero_state(1)
    ids = torch.as_tensor(list(tokens), dtype=torch.long, device=model.device)
    for start in range(0, ids.numel(), chunk_len):
        _, state = model.forward_hidden(ids[start : start + chunk_len].unsqueeze(0), state)  # (1, t)
    return state


@torch.no_grad()
def score_continuations(
    model: RWKV,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    chunk_len: int = 1024,
    state: RWKVState | None = None,
) -> list[ContinuationScore]:
    """Score each continuation after ``context``, running the context once and forking its state.

    Args:
        context: at least one token id (prepend ``END_OF_TEXT`` for an empty context).
        continuations: token id lists, each non-empty.
        batch_size: continuations run together in one batch (right-padded; the RNN is causal, so
            padding after a row's last token cannot change that row's scores).
        state: the state before ``context`` (``None``: the model's zero state).

    Returns:
        One ``ContinuationScore`` per continuation, in order.
    """
    if len(context) == 0:
        raise ConfigError("score_continuations needs a context of at least one token (use END_OF_TEXT)")
    if any(len(c) == 0 for c in continuations):
        raise ConfigError("every continuation must hold at least one token")
    # The state after context[:-1]; the last context token is fed with each continuation because its
    # logits predict the continuation's first token.
    prefix_state = run_tokens(model, context[:-1], state, chunk_len)
    last = int(context[-1])
    results: list[ContinuationScore] = []
    for start in range(0, len(continuations), batch_size):
        group = [list(map(int, c)) for c in continuations[start : start + batch_size]]
        rows = [[last, *c[:-1]] for c in group]
        width = max(len(r) for r in rows)
        inputs = torch.full((len(rows), width), END_OF_TEXT, dtype=torch.long)
        for i, r in enumerate(rows):
            inputs[i, : len(r)] = torch.tensor(r)
        hidden = _forward_chunked(model, inputs.to(model.device), prefix_state.repeat(len(rows)), chunk_len)
        for i, cont in enumerate(group):
            logprobs = F.log_softmax(model.head(hidden[i, : len(cont)]).float(), dim=-1)  # (n, V)
            target = torch.tensor(cont, device=logprobs.device)
            picked = logprobs.gather(1, target[:, None]).squeeze(1)
            greedy = bool((logprobs.argmax(dim=-1) == target).all())
            results.append(ContinuationScore(float(picked.double().sum()), greedy, len(cont)))
    return results


def _forward_chunked(model: RWKV, inputs: torch.Tensor, state: RWKVState, chunk_len: int) -> torch.Tensor:
    """Hidden states (B, T, C) of ``inputs`` (B, T), run in time pieces of ``chunk_len``."""
    pieces = []
    for start in range(0, inputs.shape[1], chunk_len):
        hidden, state = model.forward_hidden(inputs[:, start : start + chunk_len], state)
        pieces.append(hidden)
    return torch.cat(pieces, dim=1)


class TokenScorer:
    """Next-token log-likelihood of a token stream of any length, fed piece by piece.

    The stream's first token is only conditioned on (it is never scored); by convention callers start
    a document with ``END_OF_TEXT``, as the World models saw documents in training. ``feed`` returns
    the per-token log-probabilities (nats) of the tokens it scored and keeps running totals.

        scorer = TokenScorer(model)
        scorer.feed([0]); scorer.feed(doc_tokens)      # same as scorer.feed([0, *doc_tokens])
        scorer.total_logprob, scorer.num_scored
    """

    def __init__(self, model: RWKV, chunk_len: int = 512, state: RWKVState | None = None):
        if chunk_len < 1:
            raise ConfigError(f"chunk_len must be at least 1, not {chunk_len}")
        self.model = model
        self.chunk_len = chunk_len
        self.state = state
        self._last: int | None = None
        self.total_logprob = 0.0
        self.num_scored = 0

    @property
    def started(self) -> bool:
        """Whether a first (context-only) token has been fed."""
        return self._last is not None

    @torch.no_grad()
    def feed(self, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Score ``tokens`` given everything fed before; returns their log-probs (float64, 1-D)."""
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.float64)
        if self._last is None:  # the very first token is context only
            self._last = int(ids[0])
            ids = ids[1:]
        out = []
        for start in range(0, ids.numel(), self.chunk_len):
            targets = ids[start : start + self.chunk_len]
            inputs = torch.cat([torch.tensor([self._last]), targets[:-1]])
            hidden, self.state = self.model.forward_hidden(
                inputs.unsqueeze(0).to(self.model.device), self.state
            )
            logits = self.model.head(hidden[0]).float()  # (t, V)
            logprobs = -F.cross_entropy(logits, targets.to(logits.device), reduction="none")
            out.append(logprobs.double().cpu())
            self._last = int(targets[-1])
        scored = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
        self.total_logprob += float(scored.sum())
        self.num_scored += scored.numel()
        return scored


def score_document(
    model: RWKV, tokens: Sequence[int], *, chunk_len: int = 512, prefix: Sequence[int] = (END_OF_TEXT,)
) -> tuple[float, int]:
    """``(sum of log-probs in nats, number of tokens)`` of a whole document after ``prefix``."""
    scorer = TokenScorer(model, chunk_len)
    scorer.feed(list(prefix) + list(tokens))
    return scorer.total_logprob, scorer.num_scored
