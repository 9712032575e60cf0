"""Choosing the next token from logits: penalties, banned tokens, filters, temperature, the draw.

Conventions follow the official ChatRWKV pipeline (``rwkv.utils.PIPELINE``), so settings carry over:

* Penalties (``alpha_presence``, ``alpha_frequency``, ``alpha_decay``): each token generated so far
  has an occurrence weight; before sampling, ``logits[t] -= alpha_presence + alpha_frequency *
  occurrence[t]`` for every token that has occurred. After each new token all weights are
  multiplied by ``alpha_decay`` and the new token's weight grows by 1, or by 0 when its text is a
  space, a tab or digits (such tokens still get the presence penalty). Only generated tokens count,
  not the prompt.
* Filters are computed on the untempered distribution ``softmax(logits)``: top-p keeps every token
  whose probability reaches that of the token where the cumulative sum first reaches ``top_p``;
  top-k keeps the k most likely; min-p keeps tokens with ``p >= min_p * max p``. Then the kept
  probabilities are raised to ``1 / temperature`` and renormalised.
* ``temperature == 0`` is greedy decoding: the arg-max of the penalised logits.

Each row draws from its own ``torch.Generator``, so a row's tokens depend only on its own seed.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from eaglefinch.errors import ConfigError

# Nucleus sampling by rejection from this top_p (below it, a draw is outside the nucleus as often
# as not), and for at most this many rounds, after which the exact threshold cuts (see ``sample``).
REJECTION_FROM_TOP_P = 0.5
REJECTION_ROUNDS = 2
# top_p_threshold's bins below a row's highest (128 per octave: 2^-32 of the largest probability);
# the values deeper still share one bin, sorted only if the cut falls among them.
DEPTH_BINS = 4096
# Tokens whose text is one of these substrings add no frequency weight (ChatRWKV's exemption).
PENALTY_FREE_TEXT = " \t0123456789"


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token. The defaults are plain sampling at temperature 1."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 keeps everything
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    min_p: float = 0.0  # keep tokens with p >= min_p * max p; 0 keeps all
    alpha_presence: float = 0.0  # subtracted once from every token generated so far
    alpha_frequency: float = 0.0  # subtracted per (decayed) occurrence
    alpha_decay: float = 1.0  # occurrence weights are multiplied by this after every token
    banned_tokens: tuple[int, ...] = ()  # never generated
    seed: int | None = (
        None  # row i draws from a generator seeded with seed + i; None: from torch's global RNG
    )

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0 (0 is greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                isinstance(self.top_k, int) and self.top_k >= 0,
                f"top_k must be an integer >= 0, got {self.top_k}",
            ),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (0 <= self.alpha_decay <= 1, f"alpha_decay must be in [0, 1], got {self.alpha_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        object.__setattr__(self, "banned_tokens", tuple(int(t) for t in self.banned_tokens))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.alpha_presence != 0 or self.alpha_frequency != 0

    def replace(self, **changes) -> SamplingConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> SamplingConfig:
        """Build from keyword arguments, with one clear error for a name that is not a setting."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown sampling option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)


class Penalties:
    """Occurrence weights of generated tokens, per row (the ChatRWKV presence/frequency penalty).

    Args:
        batch_size, vocab_size: the logits' shape.
        config: the alphas.
        token_weight: the weight a token adds when generated (1, or 0 for penalty-free text).
    """

    def __init__(
        self,
        batch_size: int,
        vocab_size: int,
        config: SamplingConfig,
        token_weight: Callable[[int], float],
        device: torch.device | str = "cpu",
    ):
        self.config = config
        self.token_weight = token_weight
        self.seen = torch.zeros(batch_size, vocab_size, dtype=torch.bool, device=device)
        self.occurrence = torch.zeros(batch_size, vocab_size, dtype=torch.float32, device=device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> penalised logits (a new tensor)."""
        c = self.config
        return logits - self.seen * c.alpha_presence - self.occurrence * c.alpha_frequency

    def update(self, tokens: Sequence[int]) -> None:
        """Record one new token per row."""
        self.occurrence.mul_(self.config.alpha_decay)
        for row, token in enumerate(tokens):
            self.seen[row, token] = True
            self.occurrence[row, token] += self.token_weight(token)

    def select(self, rows: Sequence[int]) -> None:
        """Keep only some rows (when others have finished)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.seen.device)
        self.seen = self.seen.index_select(0, index)
        self.occurrence = self.occurrence.index_select(0, index)


def penalty_weight(decode_bytes: Callable[[list[int]], bytes]) -> Callable[[int], float]:
    """A token's occurrence weight from its text: 0 for spaces, tabs and digits, 1 otherwise (cached)."""
    cache: dict[int, float] = {}

    def weight(token: int) -> float:
        if token not in cache:
            text = decode_bytes([token]).decode("utf-8", errors="replace")
            cache[token] = 0.0 if text in PENALTY_FREE_TEXT else 1.0
        return cache[token]

    return weight


def ban(logits: torch.Tensor, tokens: Iterable[int]) -> torch.Tensor:
    """Set the logits of ``tokens`` to -inf (in place) and return them."""
    tokens = list(tokens)
    if tokens:
        logits[:, tokens] = float("-inf")
    return logits


def filtered_probs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """The distribution to draw from: (B, V) float32 logits -> (B, V) probabilities summing to 1.

    Filters (top-p, top-k, min-p) act on softmax(logits); the temperature then sharpens or
    flattens what is kept (ChatRWKV's order).
    """
    probs = torch.softmax(logits.float(), dim=-1)
    # each filter keeps the tokens at or above a per-row threshold: all of them keep those at or
    # above the largest of the thresholds
    threshold = _floor(probs, config)
    if config.top_p < 1:
        nucleus = top_p_threshold(probs, config.top_p)
        threshold = nucleus if threshold is None else torch.maximum(threshold, nucleus)
    if threshold is not None:
        probs.mul_(probs >= threshold)  # (a multiply by the mask is faster here than masked_fill_)
    if config.temperature != 1:
        probs.pow_(1.0 / config.temperature)
    return probs.div_(probs.sum(dim=-1, keepdim=True))


def _floor(probs: torch.Tensor, config: SamplingConfig) -> torch.Tensor | None:
    """Per row (B, 1): the smallest probability top-k and min-p keep (``None``: they keep all)."""
    threshold = None
    if 0 < config.top_k < probs.shape[-1]:
        threshold = torch.topk(probs, config.top_k, dim=-1).values[:, -1:]
    if config.min_p > 0:
        floor = config.min_p * probs.amax(dim=-1, keepdim=True)
        threshold = floor if threshold is None else torch.maximum(threshold, floor)
    return threshold


def top_p_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per row (B, 1): the smallest probability kept by nucleus filtering at ``top_p``.

    That is the value at the first position of the descending sort whose cumulative sum reaches
    ``top_p``, found without sorting the row: a full sort of a 65k vocabulary per row costs more
    than a batched decoding step. Probabilities are non-negative, so their float32 bit patterns
    order as they do; the top 16 bits put each one in a bin (128 bins per octave). The mass of
    every bin (one scatter over the row) says which bin the cut falls in and how much lies above
    it; only that bin's few values are then sorted, to find the exact position. Bins are counted
    from the row's highest down, so the table of masses has ``DEPTH_BINS + 1`` columns.
    """
    B = probs.shape[0]
    p = probs.float().contiguous()
    bins = _high_bits(p).long()
    # bins counted down from each row's highest, the last one holding everything deeper: the mass
    # table is (B, DEPTH_BINS + 1) whatever the values' range
    depth = (bins.amax(-1, keepdim=True) - bins).clamp_(max=DEPTH_BINS)
    mass = torch.zeros(B, DEPTH_BINS + 1, dtype=torch.float64, device=p.device)
    mass.scatter_add_(1, depth, p.double())
    # cumulative mass from the highest bin down; the cut is in the first bin whose total reaches top_p
    reached_bins = mass.cumsum(-1)
    reached = reached_bins.float() >= top_p
    j = reached.byte().argmax(-1)
    above = torch.where(j > 0, reached_bins.gather(1, (j - 1).clamp_min(0)[:, None])[:, 0], 0.0)
    in_cut_bin = depth == j[:, None]
    count = torch.count_nonzero(in_cut_bin, dim=-1)
    k = int(count.max())
    # the cut bin's values of each row, descending, padded with -1 to (B, k): the few values are
    # picked out and sorted, not the whole row
    picked = p[in_cut_bin]
    row = torch.repeat_interleave(torch.arange(B, device=p.device), count)
    order = torch.argsort(picked, descending=True, stable=True)
    order = order[torch.argsort(row[order], stable=True)]
    starts = torch.cumsum(count, 0) - count
    position = torch.arange(picked.numel(), device=p.device) - starts[row]
    values = p.new_full((B, k), -1.0)
    values[row, position] = picked[order]
    cumulative = (above[:, None] + values.clamp_min(0).double().cumsum(-1)).float()
    hit = (cumulative >= top_p) & (torch.arange(k, device=p.device) < count[:, None])
    index = torch.where(hit.any(-1), hit.byte().argmax(-1), count - 1)
    threshold = values.gather(1, index[:, None])
    # round-off can leave the total just under top_p: then everything is kept, as a sort would
    reached_any = reached.any(-1, keepdim=True)
    if bool(reached_any.all()):
        return threshold
    return torch.where(reached_any, threshold, p.amin(-1, keepdim=True))


def _high_bits(p: torch.Tensor) -> torch.Tensor:
    """The top 16 bits of each float32 (1 sign, 8 exponent, 7 of the 23 mantissa bits): read in
    place as the high int16 of each value where the machine is little-endian."""
    if sys.byteorder == "little":
        return p.view(torch.int16)[:, 1::2]
    return p.view(torch.int32) >> 16


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of ``probs`` (B, V), row r drawn with ``generators[r]`` -> LongTensor (B,).

    Inverse-CDF sampling: one uniform number per row from its own generator (so rows stay
    independent and reproducible whatever batch they share), then one batched search of the
    cumulative distribution, in float64 so that tokens of tiny probability keep their share.
    """
    B = probs.shape[0]
    if len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} rows")
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=probs.device) for g in generators])
    cdf = torch.cumsum(probs, dim=-1, dtype=torch.float64)
    index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    # round-off can point one past the last token of nonzero probability: take that token instead
    # (checked first: a token of nonzero probability is never past the last one)
    V = probs.shape[-1]
    if bool((probs.gather(1, index.clamp(max=V - 1).unsqueeze(-1)) > 0).all()) and int(index.max()) < V:
        return index
    positive = probs > 0
    last = V - 1 - positive.flip(-1).int().argmax(dim=-1)
    return torch.minimum(index, last)


def make_generators(config: SamplingConfig, batch_size: int, device: torch.device | str = "cpu") -> list:
    """One generator per row, seeded ``seed + row`` (``None`` entries use torch's global RNG)."""
    if config.seed is None:
        return [None] * batch_size
    return [torch.Generator(device=device).manual_seed(config.seed + row) for row in range(batch_size)]


def sample(
    logits: torch.Tensor, config: SamplingConfig, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Pick one token per row from already penalised and banned logits (B, V) -> LongTensor (B,).

    Each row's token is distributed as ``filtered_probs`` says, but the nucleus (top-p) is never
    computed: a token is drawn from the tempered distribution of the tokens left (top-k and min-p
    applied first) and kept if it lies in the nucleus, which one pass over the row tells (the mass
    of the tokens more likely than it is below ``top_p``). Otherwise every token at most as likely
    as the rejected one is dropped (none of them is in the nucleus) and the row draws again: what is
    kept in the end is a draw from the left distribution given the nucleus, which is the nucleus's
    own distribution. With most of the mass inside the nucleus the first draw is nearly always
    kept, and a threshold (``top_p_threshold``) costs several times a batched draw over a 65k
    vocabulary. The rows still drawing after ``REJECTION_ROUNDS``, and every row when ``top_p`` is
    below ``REJECTION_FROM_TOP_P`` (a small nucleus of a flat row takes many rounds), draw once from
    the nucleus that threshold cuts.
    """
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = _floor(probs, config)
    # p^(1/T) up to a factor per row (the draw needs no normalisation), as one exp rather than a pow
    weights = torch.softmax(logits.float() / config.temperature, dim=-1) if config.temperature != 1 else probs
    if threshold is not None:
        weights = weights * (probs >= threshold)
    elif weights is probs:
        weights = probs.clone()  # the draws below change it in place; probs stays the reference
    if config.top_p >= 1:
        return draw(weights, generators)
    if config.top_p < REJECTION_FROM_TOP_P:  # a small nucleus: drawing until inside takes many rounds
        return draw(weights.mul_(probs >= top_p_threshold(probs, config.top_p)), generators)
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    rows = torch.arange(probs.shape[0], device=probs.device)
    drawing = list(generators)  # the generators of the rows still drawing
    for _ in range(REJECTION_ROUNDS):
        picked = draw(weights, drawing)
        p_picked = probs.gather(1, picked[:, None])
        # the nucleus holds a token iff the mass strictly above it has not reached top_p (float64
        # sums, compared in float32, as ``top_p_threshold`` compares its sorted cumulative sums)
        more_likely = probs > p_picked
        above = (probs * more_likely).sum(-1, dtype=torch.float64).float()
        inside = above < config.top_p
        tokens[rows[inside]] = picked[inside]
        if bool(inside.all()):
            return tokens
        outside = ~inside
        drawing = [g for g, out in zip(drawing, outside.tolist(), strict=True) if out]
        rows, probs = rows[outside], probs[outside]
        weights = weights[outside].mul_(more_likely[outside])
    # a small nucleus of a flat row can take many rounds: the rows left draw from the nucleus itself
    weights.mul_(probs >= top_p_threshold(probs, config.top_p))
    tokens[rows] = draw(weights, drawing)
    return tokens
