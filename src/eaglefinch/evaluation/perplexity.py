"""Token-level loss and perplexity of a checkpoint on a text file or a binidx corpus, streamed.

The whole input is one token stream scored with the state carried throughout, so any length runs
in constant memory and nothing is cut into windows:

* a text file is tokenised piece by piece (``WorldTokenizer.encode_file``) and read after an
  end-of-text token;
* a binidx corpus (``PREFIX.bin`` + ``PREFIX.idx``) is its flat token stream, documents separated
  by end of text as written by ``eaglefinch data``; its first token is context only.

``loss`` is the mean negative log-likelihood per scored token (nats), ``perplexity = exp(loss)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eaglefinch.errors import DataError
from eaglefinch.evaluation.scoring import END_OF_TEXT, TokenScorer
from eaglefinch.model.rwkv import RWKV


@dataclass(frozen=True)
class Perplexity:
    source: str
    num_tokens: int  # tokens scored
    nll: float  # summed, nats

    @property
    def loss(self) -> float:
        return self.nll / self.num_tokens if self.num_tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "num_tokens": self.num_tokens,
            "nll": self.nll,
            "loss": self.loss,
            "perplexity": self.perplexity,
        }


def is_binidx(path: str | Path) -> bool:
    """True for ``PREFIX``, ``PREFIX.bin`` or ``PREFIX.idx`` where both files exist."""
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix in (".bin", ".idx") else path
    return prefix.with_suffix(".bin").is_file() and prefix.with_suffix(".idx").is_file()


def binidx_tokens(path: str | Path) -> np.ndarray:
    """The flat token stream of a binidx corpus, memory-mapped (``eaglefinch.train.binidx``)."""
    from eaglefinch.train.binidx import BinidxReader

    return BinidxReader(path).tokens


def stream_pieces(
    path: str | Path, tokenizer=None, piece: int = 1 << 16
) -> tuple[Iterator[np.ndarray], int | None]:
    """``(token pieces, total tokens or None)``: a binidx stream, or a text file after end of text."""
    path = Path(path)
    if is_binidx(path):
        tokens = binidx_tokens(path)
        return (np.asarray(tokens[i : i + piece]) for i in range(0, tokens.size, piece)), int(tokens.size)
    if not path.is_file():
        raise DataError(f"no such file or binidx corpus: {path}")
    if tokenizer is None:
        from eaglefinch.tokenizer import WorldTokenizer

        tokenizer = WorldTokenizer()

    def text_pieces() -> Iterator[np.ndarray]:
        yield np.array([END_OF_TEXT])
        yield from tokenizer.encode_file(path)

    return text_pieces(), None


def perplexity(
    model: RWKV,
    path: str | Path,
    *,
    tokenizer=None,
    chunk_len: int = 512,
    max_tokens: int | None = None,
    progress: bool = True,
) -> Perplexity:
    """Stream ``path`` through the model; ``max_tokens`` stops after that many scored tokens."""
    from tqdm.auto import tqdm

    pieces, total = stream_pieces(path, tokenizer)
    if total is not None:
        total = max(total - 1, 0)
    if max_tokens is not None:
        total = min(total, max_tokens) if total is not None else max_tokens
    scorer = TokenScorer(model, chunk_len)
    with tqdm(total=total, unit="tok", desc=Path(path).name, disable=not progress) as bar:
        for tokens in pieces:
            if max_tokens is not None:
                room = max_tokens - scorer.num_scored + (0 if scorer.started else 1)
                if room <= 0:
                    break
                tokens = tokens[:room]
            # pieces of chunk_len keep the bar moving on big pieces
            for start in range(0, len(tokens), chunk_len * 8):
                before = scorer.num_scored
                scorer.feed(tokens[start : start + chunk_len * 8].astype(np.int64))
                bar.update(scorer.num_scored - before)
    if scorer.num_scored == 0:
        raise DataError(f"{path}: fewer than two tokens, nothing to score")
    return Perplexity(str(path), scorer.num_scored, -scorer.total_logprob)
