"""Evaluation: log-likelihood scoring with state forking, lm-eval requests, bits per byte, perplexity."""

from eaglefinch.evaluation.harness import HarnessModel, encode_pair, split_pair
from eaglefinch.evaluation.scoring import (
    END_OF_TEXT,
    ContinuationScore,
    TokenScorer,
    run_tokens,
    score_continuations,
    score_document,
)

__all__ = [
    "END_OF_TEXT",
    "ContinuationScore",
    "HarnessModel",
    "TokenScorer",
    "encode_pair",
    "run_tokens",
    "score_continuations",
    "score_document",
    "split_pair",
]
