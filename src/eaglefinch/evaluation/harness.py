"""The three request types of EleutherAI's lm-eval, answered by an Eagle/Finch model.

This module does not import lm-eval: it holds everything the adapter does (tokenising request
pairs as lm-eval's Hugging Face model does, grouping multiple-choice requests by context, greedy
generation with stop strings), so it is tested without the harness installed.
``eaglefinch.evaluation.lm_eval_adapter`` wraps it in lm-eval's ``LM`` interface.

Conventions, as lm-eval expects them of a causal LM:

* end of text is id 0 (the World vocabulary's document separator); every context starts after it
  (``prefix_eot``), which is how the models saw the start of a document in training, and an empty
  context is exactly ``[0]``, as in lm-eval's HF model;
* trailing spaces of the context move to the continuation (``"Q: x A:" + " yes"``, not
  ``"Q: x A: " + "yes"``), because the World tokenizer, like GPT-2's, keeps a word's leading space
  in the word's token;
* the continuation's tokens are ``encode(context + continuation)[len(encode(context)):]``: the
  tokens the text is written with when read whole, scored after the context's own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from eaglefinch.evaluation.scoring import END_OF_TEXT, TokenScorer, run_tokens, score_continuations
from eaglefinch.model.rwkv import RWKV


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (lm-eval's HF ``_encode_pair``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Token ids of a (context, continuation) request, as lm-eval's HF model makes them."""
    context, continuation = split_pair(context, continuation)
    whole = encode(context + continuation)
    context_ids = encode(context)
    continuation_ids = whole[len(context_ids) :]
    if not continuation_ids:
        # greedy matching merged the continuation into the context's last token: score it on its own
        continuation_ids = encode(continuation)
    return context_ids, continuation_ids


@dataclass
class HarnessModel:
    """An RWKV model and tokenizer answering lm-eval requests.

    Args:
        model: the network (eval mode).
        tokenizer: ``encode(str) -> list[int]`` and ``decode_bytes(ids) -> bytes`` (``WorldTokenizer``).
        batch_size: continuations of one context scored together.
        share_prefix: run each distinct context once and fork its state for the continuations;
            ``False`` scores every request from the start (the baseline of benchmarks/eval_speed.py).
        prefix_eot: start every context after the end-of-text token 0.
        chunk_len: tokens per forward pass over long inputs (bounds memory).
    """

    model: RWKV
    tokenizer: object
    batch_size: int = 8
    share_prefix: bool = True
    prefix_eot: bool = True
    chunk_len: int = 1024

    def _context_ids(self, context_ids: list[int]) -> list[int]:
        if self.prefix_eot or not context_ids:
            return [END_OF_TEXT, *context_ids]
        return context_ids

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(sum of log-probs of the continuation, whether it is the greedy one)`` per request."""
        encoded = [encode_pair(self.tokenizer.encode, c, x) for c, x in requests]
        return self.loglikelihood_tokens([(self._context_ids(c), x) for c, x in encoded])

    def loglikelihood_tokens(
        self, requests: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, bool]]:
        """As ``loglikelihood`` for token ids; each context is used as given (no prefix added)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if not self.share_prefix:
            for i, (context, continuation) in enumerate(requests):
                (score,) = score_continuations(self.model, context, [continuation], chunk_len=self.chunk_len)
                results[i] = (score.logprob, score.is_greedy)
            return results  # type: ignore[return-value]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (context, _) in enumerate(requests):
            groups.setdefault(tuple(context), []).append(i)
        for context, members in groups.items():
            scores = score_continuations(
                self.model,
                context,
                [requests[i][1] for i in members],
                batch_size=self.batch_size,
                chunk_len=self.chunk_len,
            )
            for i, score in zip(members, scores, strict=True):
                results[i] = (score.logprob, score.is_greedy)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Log-likelihood of each whole text after end of text; the state carries the full history."""
        out = []
        for text in texts:
            scorer = TokenScorer(self.model, self.chunk_len)
            scorer.feed([END_OF_TEXT, *self.tokenizer.encode(text)])
            out.append(scorer.total_logprob)
        return out

    @torch.no_grad()
    def generate_until(self, context: str, until: Sequence[str] = (), max_gen_toks: int = 256) -> str:
        """Greedy continuation of ``context``, cut before the first stop string or end of text."""
        ids = self._context_ids(self.tokenizer.encode(context))
        state = run_tokens(self.model, ids[:-1], None, self.chunk_len)
        token = ids[-1]
        generated: list[int] = []
        text = ""
        for _ in range(max_gen_toks):
            logits, state = self.model(torch.tensor([[token]], device=self.model.device), state)
            token = int(logits[0, -1].argmax())
            if token == END_OF_TEXT:
                break
            generated.append(token)
            text = self.tokenizer.decode_bytes(generated).decode("utf-8", errors="replace")
            if any(stop and stop in text for stop in until):
                break
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text
