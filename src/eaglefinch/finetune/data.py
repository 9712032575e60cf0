"""Fine-tuning data: plain text, ``{"text": ...}`` lines and chat transcripts, with a loss mask.

Accepted files (UTF-8):

* ``.txt``: one document; its tokens are cut into examples of ``ctx_len + 1`` tokens.
* ``.jsonl``: one JSON object per line, either ``{"text": "..."}`` (a document, cut like a
  ``.txt`` file when it is longer than ``ctx_len + 1`` tokens) or
  ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (one
  conversation, rendered in the World chat format of ``eaglefinch.chat_format`` and truncated
  to ``ctx_len + 1`` tokens). Both kinds may share a file.

A document ends with token 0, as the pretraining corpora separate their documents. With
``mask_prompt`` (the default), a conversation's loss counts only the tokens of the assistant's
replies (their text and the blank line that ends the turn); everything else is context.

Each segment of a conversation is tokenised on its own, so the reply tokens are those the model
produces after a prompt that ends in ``Assistant:``, as it does when serving.

Examples are batched like ``TokenWindows``: sample ``i`` of a run is a pure function of the seed
and ``i`` (a seeded permutation of the examples per epoch), so resuming is exact. A batch is
padded to its longest example: inputs with token 0, targets with ``IGNORE`` (no loss).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eaglefinch import chat_format
from eaglefinch.errors import ConfigError, DataError

IGNORE = -100  # target value that the cross-entropy skips (PyTorch's ignore_index default)
END_OF_TEXT = 0
SUFFIXES = (".txt", ".jsonl")
log = logging.getLogger(__name__)


@dataclass
class Example:
    tokens: np.ndarray  # (n + 1,) int64: inputs are tokens[:-1], targets tokens[1:]
    trained: np.ndarray  # (n,) bool: which targets count in the loss

    @property
    def n_targets(self) -> int:
        return len(self.trained)


def is_example_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def _document(tokens: list[int], ctx_len: int) -> list[Example]:
    """A document's tokens (plus end of text) cut into examples of at most ``ctx_len + 1`` tokens."""
    tokens = tokens + [END_OF_TEXT]
    out = []
    for start in range(0, max(len(tokens) - 1, 1), ctx_len):
        piece = np.asarray(tokens[start : start + ctx_len + 1], dtype=np.int64)
        if len(piece) >= 2:
            out.append(Example(piece, np.ones(len(piece) - 1, dtype=bool)))
    return out


def _conversation(messages: list, tokenizer, ctx_len: int, mask_prompt: bool) -> tuple[Example, bool]:
    """A chat transcript as one example (and whether it had to be truncated)."""
    tokens: list[int] = []
    is_reply: list[bool] = []
    for text, reply in chat_format.segments(messages):
        ids = tokenizer.encode(text)
        tokens += ids
        is_reply += [reply] * len(ids)
    truncated = len(tokens) > ctx_len + 1
    tokens, is_reply = tokens[: ctx_len + 1], is_reply[: ctx_len + 1]
    trained = np.asarray(is_reply[1:], dtype=bool) if mask_prompt else np.ones(len(tokens) - 1, dtype=bool)
    return Example(np.asarray(tokens, dtype=np.int64), trained), truncated


def read_examples(path: str | Path, tokenizer, ctx_len: int, *, mask_prompt: bool = True) -> list[Example]:
    """Tokenise a ``.txt`` or ``.jsonl`` file into examples (see the module docstring).

    Raises DataError naming the file (and line) for anything it cannot use.
    """
    path = Path(path)
    if ctx_len < 1:
        raise ConfigError(f"ctx_len must be positive, got {ctx_len}")
    if not path.is_file():
        raise DataError(f"{path}: no such file (fine-tuning data is a .txt or .jsonl file)")
    if not is_example_file(path):
        raise DataError(
            f"{path}: fine-tuning data must be a .txt or .jsonl file, not {path.suffix or 'none'}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() == ".txt":
        examples = _document(tokenizer.encode(text), ctx_len) if text.strip() else []
    else:
        examples = _read_jsonl(path, text, tokenizer, ctx_len, mask_prompt)
    if not examples:
        raise DataError(f"{path}: no training examples in the file")
    if not any(e.trained.any() for e in examples):
        raise DataError(f"{path}: no token to train on (every conversation lacks an assistant reply)")
    return examples


def _read_jsonl(path: Path, text: str, tokenizer, ctx_len: int, mask_prompt: bool) -> list[Example]:
    examples: list[Example] = []
    truncated = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if isinstance(record, dict) and "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
            try:
                messages = chat_format.as_messages(messages)
            except ConfigError as error:
                raise DataError(f"{where}: {error}") from None
            example, cut = _conversation(messages, tokenizer, ctx_len, mask_prompt)
            truncated += cut
            if len(example.tokens) >= 2:
                examples.append(example)
        elif isinstance(record, dict) and "text" in record:
            if not isinstance(record["text"], str):
                raise DataError(f"{where}: 'text' must be a string")
            if record["text"]:
                examples += _document(tokenizer.encode(record["text"]), ctx_len)
        else:
            raise DataError(
                f'{where}: expected {{"text": "..."}} or {{"messages": [{{"role": ..., "content": ...}}]}}'
            )
    if truncated:
        log.warning(
            "%s: %d conversations were longer than %d tokens and were cut", path, truncated, ctx_len + 1
        )
    return examples


class ExampleBatches:
    """Batches of examples, with the sampling interface of ``TokenWindows`` (see the module docstring).

    Args:
        examples: from ``read_examples``.
        ctx_len: the longest example's input length (examples are already cut to it).
        seed: the order of the examples and the choice of the held-out ones.
        val_tokens: hold out whole examples (a seeded choice) until they hold this many targets.
    """

    def __init__(self, examples: list[Example], ctx_len: int, seed: int = 0, val_tokens: int = 0):
        if not examples:
            raise DataError("no training examples")
        self.examples = examples
        self.ctx_len = ctx_len
        self.seed = seed
        order = np.random.default_rng([seed, 1 << 30]).permutation(len(examples))
        held, count = [], 0
        for index in order:
            if count >= val_tokens:
                break
            held.append(int(index))
            count += examples[index].n_targets
        if len(held) >= len(examples):
            raise DataError(
                f"{len(examples)} examples are too few to hold out {val_tokens} tokens and still train"
            )
        self.val_index = sorted(held)
        self.train_index = np.setdiff1d(np.arange(len(examples)), self.val_index)
        self.n_windows = len(self.train_index)
        self._epoch, self._order = -1, np.zeros(0, dtype=np.int64)
        self._counted = (0, 0)  # (samples, their input tokens) of the last tokens_before

    def _example(self, index: int) -> Example:
        epoch, j = divmod(index, self.n_windows)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._epoch = epoch
        return self.examples[int(self.train_index[self._order[j]])]

    @staticmethod
    def collate(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) LongTensors [B, longest]: padding is token 0 in, IGNORE out."""
        T = max(e.n_targets for e in examples)
        inputs = np.full((len(examples), T), END_OF_TEXT, dtype=np.int64)
        targets = np.full((len(examples), T), IGNORE, dtype=np.int64)
        for row, e in enumerate(examples):
            n = e.n_targets
            inputs[row, :n] = e.tokens[:-1]
            targets[row, :n] = np.where(e.trained, e.tokens[1:], IGNORE)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``first .. first + count - 1`` as (inputs, targets)."""
        return self.collate([self._example(first + i) for i in range(count)])

    def tokens_before(self, index: int) -> int:
        """Input tokens (padding excluded) in samples ``0 .. index - 1``; counted on from the last call."""
        counted, total = self._counted
        if index < counted:
            counted, total = 0, 0
        for i in range(counted, index):
            total += self._example(i).n_targets
        self._counted = (index, total)
        return total

    def trained_targets(self, first: int, count: int) -> int:
        """How many targets of samples ``first .. first + count - 1`` count in the loss."""
        return sum(int(self._example(first + i).trained.sum()) for i in range(count))

    def epoch_of(self, index: int) -> float:
        return index / self.n_windows

    def val_batches(self, batch_size: int, max_batches: int | None = None):
        if not self.val_index:
            raise DataError("no held-out data: set val_tokens")
        groups = [self.val_index[i : i + batch_size] for i in range(0, len(self.val_index), batch_size)]
        for group in groups[:max_batches]:
            yield self.collate([self.examples[i] for i in group])

    def describe(self) -> str:
        targets = sum(self.examples[i].n_targets for i in self.train_index)
        trained = sum(int(self.examples[i].trained.sum()) for i in self.train_index)
        return f"{self.n_windows} examples ({math.ceil(targets):,} tokens, {trained:,} of them trained)" + (
            f", {len(self.val_index)} held out" if self.val_index else ""
        )
