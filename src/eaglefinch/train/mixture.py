"""A data mixture: named sources with weights, and how documents are drawn from them.

A spec is a small JSON (or YAML, when PyYAML is installed) file, for example the shape of the
paper's World v2 recipe (about 70% English, 15% multilingual, 15% code)::

    {
      "seed": 0,
      "tokens": null,
      "sources": [
        {"name": "english", "weight": 0.70, "paths": ["books.jsonl.gz"]},
        {"name": "multilingual", "weight": 0.15, "paths": ["udhr.jsonl"], "field": "text"},
        {"name": "code", "weight": 0.15, "paths": ["{stdlib}"], "kind": "code", "max_bytes": 400000}
      ]
    }

Paths are relative to the spec file; ``{stdlib}`` is the running Python's standard library and
``{data}`` the data shipped with eaglefinch. ``kind`` is "text" (a file is a document), "jsonl"
(a line's ``field`` is a document) or "code" (every source file under a directory is a document);
left out, it follows from the path. ``max_bytes`` caps the input read from a source.

Weights are shares of the output tokens. ``tokens`` null uses as many tokens as the scarcest
source allows without repeating a document; a larger ``tokens`` repeats smaller sources (in a
fresh shuffle each pass). Each source's share is met exactly: its last document is cut to fit.
"""

from __future__ import annotations

import json
import math
import os
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from eaglefinch.errors import DataError

Kind = Literal["text", "jsonl", "code"]
KINDS = ("text", "jsonl", "code")
CODE_EXTENSIONS = (
    ".py",
    ".pyi",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cu",
    ".rs",
    ".go",
    ".java",
    ".kt",
    ".scala",
    ".js",
    ".mjs",
    ".ts",
    ".tsx",
    ".jsx",
    ".rb",
    ".php",
    ".swift",
    ".m",
    ".cs",
    ".sh",
    ".bash",
    ".lua",
    ".pl",
    ".r",
    ".jl",
    ".hs",
    ".ml",
    ".sql",
    ".toml",
    ".yaml",
    ".yml",
    ".cmake",
    ".zig",
)


def package_data_dir() -> Path:
    """Where the data shipped with eaglefinch lives (``eaglefinch/data``)."""
    return Path(__file__).resolve().parent.parent / "data"


def expand_path(raw: str, base: Path) -> Path:
    """Resolve ``{stdlib}`` / ``{data}`` placeholders, ``~`` and paths relative to ``base``."""
    places = {"stdlib": sysconfig.get_paths()["stdlib"], "data": str(package_data_dir())}
    try:
        text = raw.format(**places)
    except (KeyError, IndexError, ValueError):
        raise DataError(f"path {raw!r}: unknown placeholder; use {{stdlib}} or {{data}}") from None
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def infer_kind(path: Path) -> Kind:
    if path.is_dir():
        return "code"
    name = path.name.lower().removesuffix(".gz")
    return "jsonl" if name.endswith((".jsonl", ".ndjson")) else "text"


@dataclass(frozen=True)
class Source:
    """One input of a mixture: a name, a weight and the files or folders that hold its documents."""

    name: str
    weight: float
    paths: tuple[Path, ...]
    kind: Kind | None = None  # None: from each path (folder -> code, *.jsonl[.gz] -> jsonl, else text)
    field: str = "text"  # the jsonl field holding a document
    extensions: tuple[str, ...] = CODE_EXTENSIONS  # files a code folder contributes
    max_bytes: int | None = None  # read at most this much input (whole files / lines)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise DataError(f"a source needs a non-empty name, got {self.name!r}")
        if not isinstance(self.weight, int | float) or not math.isfinite(self.weight) or self.weight < 0:
            raise DataError(f"source {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}")
        if not self.paths:
            raise DataError(f"source {self.name!r} lists no paths")
        if self.kind is not None and self.kind not in KINDS:
            raise DataError(f"source {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise DataError(f"source {self.name!r}: max_bytes must be positive")
        for path in self.paths:
            if not path.exists():
                raise DataError(f"source {self.name!r}: {path} does not exist")

    def kind_of(self, path: Path) -> Kind:
        return self.kind or infer_kind(path)


@dataclass(frozen=True)
class Mixture:
    sources: tuple[Source, ...]
    tokens: int | None = None  # output size; None: no source repeats
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise DataError("a mixture needs at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise DataError(f"source names must be unique, got {names}")
        if sum(s.weight for s in self.sources) <= 0:
            raise DataError("at least one source needs a positive weight")
        if self.tokens is not None and (not isinstance(self.tokens, int) or self.tokens <= 0):
            raise DataError(f"tokens must be a positive integer or null, got {self.tokens!r}")

    @property
    def shares(self) -> dict[str, float]:
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}

    @classmethod
    def from_dict(cls, data: Mapping, base: str | os.PathLike = ".") -> Mixture:
        base = Path(base)
        if not isinstance(data, Mapping) or not isinstance(data.get("sources"), Sequence):
            raise DataError("a mixture spec is a mapping with a list 'sources'")
        unknown = set(data) - {"sources", "tokens", "seed"}
        if unknown:
            raise DataError(f"unknown mixture fields {sorted(unknown)}; known: sources, tokens, seed")
        sources = []
        for i, raw in enumerate(data["sources"]):
            if not isinstance(raw, Mapping):
                raise DataError(f"source #{i} is not a mapping")
            allowed = {"name", "weight", "paths", "path", "kind", "field", "extensions", "max_bytes"}
            extra = set(raw) - allowed
            if extra:
                raise DataError(f"source #{i}: unknown fields {sorted(extra)}; known: {sorted(allowed)}")
            paths = raw.get("paths", raw.get("path"))
            if isinstance(paths, str):
                paths = [paths]
            if not paths:
                raise DataError(f"source #{i} ({raw.get('name', '?')}) needs 'paths'")
            extensions = raw.get("extensions")
            sources.append(
                Source(
                    name=raw.get("name", f"source{i}"),
                    weight=raw.get("weight", 1.0),
                    paths=tuple(expand_path(str(p), base) for p in paths),
                    kind=raw.get("kind"),
                    field=raw.get("field", "text"),
                    extensions=tuple(e.lower() for e in extensions) if extensions else CODE_EXTENSIONS,
                    max_bytes=raw.get("max_bytes"),
                )
            )
        return cls(sources=tuple(sources), tokens=data.get("tokens"), seed=int(data.get("seed", 0)))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Mixture:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"mixture spec {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise DataError("a YAML spec needs PyYAML (pip install pyyaml); or use JSON") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise DataError(f"{path} is not valid YAML: {error}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(data, base=path.parent)

    def describe(self) -> dict:
        """A JSON-ready description (what the resumable build compares against)."""
        return {
            "seed": self.seed,
            "tokens": self.tokens,
            "sources": [
                {
                    "name": s.name,
                    "weight": s.weight,
                    "paths": [str(p) for p in s.paths],
                    "kind": s.kind,
                    "field": s.field,
                    "extensions": list(s.extensions),
                    "max_bytes": s.max_bytes,
                }
                for s in self.sources
            ],
        }


@dataclass
class Piece:
    """A document (or the front part of one) chosen for the output: ``length`` tokens before its 0."""

    source: int
    document: int
    length: int


@dataclass
class Plan:
    pieces: list[Piece]
    targets: dict[str, int]  # tokens per source, separators included
    repeats: dict[str, float] = field(default_factory=dict)  # output tokens / available tokens


def plan_mixture(mixture: Mixture, doc_lengths: Sequence[np.ndarray]) -> Plan:
    """Choose which documents go into the output, and in which order.

    ``doc_lengths[s]`` holds the token counts of source s's documents (without their end-of-text 0).
    Every document costs its length + 1 (the separator). Deterministic for a given seed.
    """
    shares = mixture.shares
    costs = [np.asarray(lengths, dtype=np.int64) + 1 for lengths in doc_lengths]
    available = {s.name: int(c.sum()) for s, c in zip(mixture.sources, costs, strict=True)}
    for s in mixture.sources:
        if shares[s.name] > 0 and available[s.name] == 0:
            raise DataError(f"source {s.name!r} has weight {s.weight} but no documents")
    if mixture.tokens is None:
        total = min(available[s.name] / shares[s.name] for s in mixture.sources if shares[s.name] > 0)
        total = int(math.floor(total))
    else:
        total = mixture.tokens
    targets = {s.name: int(round(shares[s.name] * total)) for s in mixture.sources}
    pieces: list[Piece] = []
    for i, source in enumerate(mixture.sources):
        target, cost = targets[source.name], costs[i]
        rng = np.random.default_rng([mixture.seed, i])
        taken, full = 0, False
        while not full:  # one pass per repetition, each in a fresh order
            for d in rng.permutation(len(cost)):
                room = target - taken
                if room < 2:  # a piece needs at least one token and its separator
                    full = True
                    break
                length = int(min(cost[d], room)) - 1
                pieces.append(Piece(i, int(d), length))
                taken += length + 1
        targets[source.name] = taken
    order = np.random.default_rng([mixture.seed, len(mixture.sources)]).permutation(len(pieces))
    repeats = {name: targets[name] / available[name] if available[name] else 0.0 for name in targets}
    return Plan(pieces=[pieces[j] for j in order], targets=targets, repeats=repeats)
