"""Bits per byte per language: how well a checkpoint compresses text, comparable across tokenizers.

For a document of ``n_bytes`` UTF-8 bytes tokenised into ``n_tokens`` tokens, the model's summed
negative log-likelihood ``nll`` (nats, each token scored after the previous ones and after an
end-of-text token) gives

    loss per token = nll / n_tokens          bits per byte = nll / ln(2) / n_bytes

Per-token loss depends on how finely the tokenizer splits the text; bits per byte does not, so the
World tokenizer's bytes per token is reported alongside (a script split into many short tokens
costs the model more predictions per byte).

Data: the bundled UDHR slice (``eaglefinch/data/udhr``: 532 languages, the first ~2,000 bytes of
each), a JSON-lines file (one record per document, with a text field and a language field) or a
plain text file (one "language", named after the file). Documents of one language are summed.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from eaglefinch.errors import DataError
from eaglefinch.evaluation.scoring import END_OF_TEXT, TokenScorer
from eaglefinch.model.rwkv import RWKV

UDHR_RESOURCE = ("data", "udhr", "udhr_2kb.jsonl.gz")


@dataclass(frozen=True)
class Document:
    lang: str  # the grouping key (UDHR: the udhr package's code, e.g. "eng", "cmn_hans", "jpn")
    text: str
    title: str = ""


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(
    path: str | Path, text_field: str = "text", lang_field: str = "code", title_field: str = "title"
) -> Iterator[Document]:
    """Documents of a JSON-lines file (``.gz`` allowed); a record without ``lang_field`` is "all"."""
    path = Path(path)
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise DataError(f"{path}:{number}: no string field {text_field!r} (use --text-field)")
            yield Document(
                str(record.get(lang_field, "all")), record[text_field], str(record.get(title_field, ""))
            )


def udhr_documents() -> list[Document]:
    """The bundled UDHR slice: one document per language, keyed by the udhr package's code."""
    resource = resources.files("eaglefinch").joinpath(*UDHR_RESOURCE)
    with resources.as_file(resource) as path:
        return list(read_jsonl(path))


def load_documents(
    path: str | Path | None, text_field: str = "text", lang_field: str = "code"
) -> list[Document]:
    """The bundled UDHR (``path`` None), a ``.jsonl``/``.jsonl.gz`` file, or a text file."""
    if path is None:
        return udhr_documents()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        docs = list(read_jsonl(path, text_field, lang_field))
    else:
        try:
            docs = [Document(path.stem, path.read_text(encoding="utf-8"), path.name)]
        except UnicodeDecodeError as error:
            raise DataError(f"{path} is not UTF-8 text (byte {error.start})") from None
    if not docs:
        raise DataError(f"{path} holds no documents")
    return docs


def select_languages(docs: Sequence[Document], langs: Sequence[str] | None) -> list[Document]:
    """Keep the documents of ``langs`` (all when None); unknown codes are an error naming a few known ones."""
    if not langs:
        return list(docs)
    known = {d.lang for d in docs}
    missing = [lang for lang in langs if lang not in known]
    if missing:
        sample = ", ".join(sorted(known)[:12])
        raise DataError(
            f"no documents for language(s) {', '.join(missing)}; known codes include {sample}, ..."
        )
    wanted = set(langs)
    return [d for d in docs if d.lang in wanted]


@dataclass
class LanguageScore:
    lang: str
    title: str
    n_bytes: int
    n_tokens: int
    nll: dict[str, float] = field(default_factory=dict)  # checkpoint name -> summed nats

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / self.n_tokens if self.n_tokens else math.nan

    def loss_per_token(self, name: str) -> float:
        return self.nll[name] / self.n_tokens

    def bits_per_byte(self, name: str) -> float:
        return self.nll[name] / math.log(2) / self.n_bytes

    def as_dict(self) -> dict:
        out = asdict(self)
        out["bytes_per_token"] = self.bytes_per_token
        out["models"] = {
            name: {"loss_per_token": self.loss_per_token(name), "bits_per_byte": self.bits_per_byte(name)}
            for name in self.nll
        }
        return out


def tokenize_languages(
    docs: Iterable[Document], encode
) -> tuple[list[LanguageScore], dict[str, list[list[int]]]]:
    """Group documents by language; count bytes and tokens; return the scores to fill and the ids."""
    scores: dict[str, LanguageScore] = {}
    ids: dict[str, list[list[int]]] = {}
    for doc in docs:
        tokens = encode(doc.text)
        if not tokens:
            continue
        score = scores.setdefault(doc.lang, LanguageScore(doc.lang, doc.title, 0, 0))
        score.n_bytes += len(doc.text.encode("utf-8"))
        score.n_tokens += len(tokens)
        ids.setdefault(doc.lang, []).append(tokens)
    if not scores:
        raise DataError("every document is empty")
    return list(scores.values()), ids


def score_languages(
    model: RWKV,
    name: str,
    scores: list[LanguageScore],
    ids: dict[str, list[list[int]]],
    chunk_len: int = 512,
    progress=None,
) -> None:
    """Fill ``score.nll[name]`` for every language: each document after end of text, state carried
    across ``chunk_len`` pieces so that a long document is scored with its whole history."""
    for score in scores:
        total = 0.0
        for tokens in ids[score.lang]:
            scorer = TokenScorer(model, chunk_len)
            scorer.feed([END_OF_TEXT, *tokens])
            total -= scorer.total_logprob
            if progress is not None:
                progress.update(len(tokens))
        score.nll[name] = total
