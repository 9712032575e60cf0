"""Long documents for the long-context experiment: read, tokenise, compact vocabulary, split.

Documents are JSON lines with ``title`` and ``text`` (plain or gzip'd), such as the KJV books.
Tokens come from the World tokenizer; since a tiny model cannot afford a 65,536-row embedding
(nor, on a CPU, a head over the ~9,000 ids the KJV uses: the head and softmax dominate a small
model's cost), the ``vocab_size - 1`` ids most frequent in the training documents are renumbered
1..V-1 (most frequent first, ties by id) and every other id maps to 0, the unknown id. Held-out
targets equal to 0 still count in the loss: the model has to put probability on "unknown" for them.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from eaglefinch.errors import DataError

UNKNOWN = 0


def shipped_corpus() -> Path:
    """The 11-book KJV slice shipped with the package (``eaglefinch/data/kjv.jsonl.gz``)."""
    return Path(str(resources.files("eaglefinch") / "data" / "kjv.jsonl.gz"))


def read_documents(path: Path) -> list[tuple[str, str]]:
    """``[(title, text)]`` from a JSON-lines file (``.gz`` read through gzip)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"corpus {path} not found: pass --corpus PATH to a JSON-lines file with 'title' and 'text'"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f"{path}:{n}: expected a JSON object with a 'text' string")
                docs.append((str(record.get("title", f"doc{n}")), record["text"]))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"cannot read corpus {path}: {err}") from None
    if not docs:
        raise DataError(f"corpus {path} holds no documents")
    return docs


@dataclass
class Corpus:
    """Tokenised documents in a compact vocabulary.

    ``train`` and ``heldout`` are lists of 1-D LongTensors; ``vocab`` maps compact id -> World id
    (``vocab[0]`` is -1, the unknown id).
    """

    train: list[torch.Tensor]
    heldout: list[torch.Tensor]
    train_titles: list[str]
    heldout_titles: list[str]
    vocab: list[int]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def compact_vocabulary(train_ids: list[list[int]], size: int | None = None) -> dict[int, int]:
    """World id -> compact id 1, 2, ... by falling frequency (ties: smaller id first); 0 is unknown.

    ``size`` caps the compact vocabulary, the unknown id included (all ids seen when ``None``).
    """
    counts = Counter(t for ids in train_ids for t in ids)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    if size is not None:
        ranked = ranked[: max(0, size - 1)]
    return {t: i + 1 for i, t in enumerate(ranked)}


def build_corpus(
    path: Path, *, n_heldout: int, min_heldout_tokens: int, seed: int, vocab_size: int | None = None
) -> Corpus:
    """Tokenise ``path`` and hold out ``n_heldout`` whole documents of at least ``min_heldout_tokens``.

    The held-out documents are drawn with ``seed`` among those long enough; the rest train.
    ``vocab_size`` caps the compact vocabulary (see the module docstring).
    """
    from eaglefinch import WorldTokenizer

    docs = read_documents(path)
    tok = WorldTokenizer()
    ids = [tok.encode(text) for _, text in docs]
    long_enough = [i for i, x in enumerate(ids) if len(x) >= min_heldout_tokens]
    if len(long_enough) < n_heldout or len(docs) - n_heldout < 1:
        raise DataError(
            f"{path}: {len(long_enough)} documents have >= {min_heldout_tokens} tokens, "
            f"need {n_heldout} held out and at least one left to train on"
        )
    held = sorted(random.Random(seed).sample(long_enough, n_heldout))
    train_idx = [i for i in range(len(docs)) if i not in held]
    table = compact_vocabulary([ids[i] for i in train_idx], vocab_size)
    vocab = [-1] * (len(table) + 1)
    for world, compact in table.items():
        vocab[compact] = world

    def remap(x: list[int]) -> torch.Tensor:
        return torch.tensor([table.get(t, UNKNOWN) for t in x], dtype=torch.long)

    return Corpus(
        train=[remap(ids[i]) for i in train_idx],
        heldout=[remap(ids[i]) for i in held],
        train_titles=[docs[i][0] for i in train_idx],
        heldout_titles=[docs[i][0] for i in held],
        vocab=vocab,
    )


def sample_windows(docs: list[torch.Tensor], batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``[batch, length]`` windows at random offsets; documents drawn in proportion to their length.

    Documents shorter than ``length`` are skipped.
    """
    usable = [d for d in docs if len(d) >= length]
    if not usable:
        raise DataError(f"no training document has {length} tokens")
    weights = torch.tensor([len(d) - length + 1 for d in usable], dtype=torch.float64)
    which = torch.multinomial(weights, batch, replacement=True, generator=gen)
    rows = []
    for i in which.tolist():
        start = int(torch.randint(len(usable[i]) - length + 1, (1,), generator=gen))
        rows.append(usable[i][start : start + length])
    return torch.stack(rows)
