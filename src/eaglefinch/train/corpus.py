"""Turn text, jsonl and source-code trees into a World-tokenized binidx corpus.

The build has two stages:

1. Tokenize. The inputs are cut into parts (whole files, or ~8 MB runs of jsonl lines); worker
   processes tokenize the parts, each into its own small binidx under ``PREFIX.work/``. A part
   that is finished is never redone, so an interrupted build resumes where it stopped when run
   again with the same inputs.
2. Mix. ``mixture.plan_mixture`` picks documents by the sources' weights; they are written, each
   followed by token 0, into ``PREFIX.bin`` / ``PREFIX.idx``, with a summary in ``PREFIX.json``.
"""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eaglefinch.errors import DataError
from eaglefinch.train.binidx import BinidxReader, BinidxWriter, corpus_prefix
from eaglefinch.train.mixture import CODE_EXTENSIONS, Mixture, Source, plan_mixture

PART_BYTES = 8 << 20  # input bytes per part: enough work per task, small enough to spread over workers
PARALLEL_BYTES = 32 << 20  # below this much input, one process tokenizes faster than several start
WORK_VERSION = 1
SKIPPED_FOLDERS = ("__pycache__", "node_modules", "site-packages")
TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".text")  # what a folder of kind "text" contributes

Tokenizer = Callable[[], object]  # a picklable factory returning an object with encode(str) -> ids


def world_tokenizer():
    """The World tokenizer (the default; workers build their own copy)."""
    from eaglefinch.tokenizer import WorldTokenizer

    return WorldTokenizer()


def tokenizer_name(factory: Tokenizer) -> str:
    """A stable description of a tokenizer factory, recorded in the work manifest."""
    if factory is world_tokenizer:
        return "world"
    func = getattr(factory, "func", factory)
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
    args = getattr(factory, "args", ())
    return f"{name}{tuple(str(a) for a in args)}" if args else name


@dataclass(frozen=True)
class Part:
    """A unit of tokenization work: whole files, or a byte range of lines of one jsonl file."""

    source: int
    index: int
    kind: str
    files: tuple[str, ...]
    start: int = 0  # byte range [start, end) for a jsonl part of a plain (not gzipped) file
    end: int = -1
    field: str = "text"
    size: int = 0  # input bytes, for the progress bar

    @property
    def name(self) -> str:
        return f"s{self.source:03d}-p{self.index:06d}"


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _code_files(root: Path, extensions: tuple[str, ...]) -> Iterator[Path]:
    """Source files under ``root`` in sorted order, skipping hidden folders and caches."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        for name in sorted(files):
            if name.lower().endswith(extensions):
                yield Path(folder) / name


def _jsonl_ranges(path: Path, budget: int | None) -> Iterator[tuple[int, int]]:
    """Byte ranges of about PART_BYTES ending on line boundaries (at most ``budget`` bytes in all)."""
    size = path.stat().st_size
    limit = size if budget is None else min(size, budget)
    with open(path, "rb") as handle:
        start = 0
        while start < limit:
            handle.seek(min(start + PART_BYTES, limit))
            end = handle.tell()
            if end < size:
                handle.readline()  # finish the line we landed in
                end = handle.tell()
            yield start, end
            start = end


def _file_groups(files: Iterator[Path], budget: int | None) -> Iterator[tuple[list[str], int]]:
    """Group files into runs of about PART_BYTES (at most ``budget`` bytes in all, whole files)."""
    group: list[str] = []
    size = 0
    for file in files:
        if budget is not None and budget <= 0:
            break
        n = file.stat().st_size
        group.append(str(file))
        size += n
        budget = None if budget is None else budget - n
        if size >= PART_BYTES:
            yield group, size
            group, size = [], 0
    if group:
        yield group, size


def _source_parts(s: int, source: Source) -> Iterator[Part]:
    budget = source.max_bytes
    index = 0
    for path in source.paths:
        if budget is not None and budget <= 0:
            break
        kind = source.kind_of(path)
        if kind == "jsonl":
            for file in sorted(path.rglob("*.jsonl*")) if path.is_dir() else [path]:
                if file.suffix == ".gz":  # no seeking inside gzip: the whole file is one part
                    ranges = [(0, -1, file.stat().st_size)]
                else:
                    ranges = [(a, b, b - a) for a, b in _jsonl_ranges(file, budget)]
                for start, end, size in ranges:
                    if budget is not None and budget <= 0:
                        break
                    yield Part(s, index, "jsonl", (str(file),), start, end, source.field, size)
                    index += 1
                    budget = None if budget is None else budget - size
        else:
            extensions = source.extensions
            if kind == "text" and extensions == CODE_EXTENSIONS:
                extensions = TEXT_EXTENSIONS
            files = _code_files(path, extensions) if path.is_dir() else iter([path])
            for group, size in _file_groups(files, budget):
                yield Part(s, index, kind, tuple(group), size=size)
                index += 1
                budget = None if budget is None else budget - size


def plan_parts(mixture: Mixture) -> list[Part]:
    """Cut every source into parts, deterministically (sorted files, fixed sizes)."""
    return [part for s, source in enumerate(mixture.sources) for part in _source_parts(s, source)]


def read_part(part: Part) -> Iterator[str]:
    """The documents of a part, in order (empty ones skipped)."""
    if part.kind == "jsonl":
        path = Path(part.files[0])
        if path.suffix == ".gz":
            lines: Iterator[tuple[int, str]] = enumerate(_open_text(path), 1)
        else:
            with open(path, "rb") as handle:
                handle.seek(part.start)
                raw = handle.read(part.end - part.start)
            lines = enumerate(raw.decode("utf-8", errors="strict").splitlines(), 1)
        for number, line in lines:
            if not line.strip():
                continue
            where = f"line {number} of part {part.name}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: not JSON ({where}): {error}") from None
            if not isinstance(record, dict) or part.field not in record:
                raise DataError(f"{path}: a record has no {part.field!r} field ({where})")
            text = record[part.field]
            if not isinstance(text, str):
                raise DataError(f"{path}: field {part.field!r} is not a string ({where})")
            if text:
                yield text
    else:
        for file in part.files:
            try:
                with _open_text(Path(file)) as handle:
                    text = handle.read()
            except UnicodeDecodeError:
                continue  # binary or non-UTF-8 files are not text documents
            if text:
                yield text


_worker_tokenizer = None


def _init_worker(factory: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = factory()


def tokenize_part(part: Part, work: str) -> dict:
    """Tokenize one part into ``work/<part>.bin/.idx`` (one item per document, no separators)."""
    tokenizer = _worker_tokenizer
    prefix = Path(work) / part.name
    documents = tokens = 0
    with BinidxWriter(prefix) as writer:
        for text in read_part(part):
            ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
            if ids.size == 0:
                continue
            if ids.min() < 1 or ids.max() >= 1 << 16:
                bad = int(ids.min()) if ids.min() < 1 else int(ids.max())
                raise DataError(f"tokenizer gave id {bad}; a corpus holds ids 1..65535 (0 ends documents)")
            writer.add_document(ids.astype(np.uint16))
            documents += 1
            tokens += int(ids.size)
    return {"part": part.name, "documents": documents, "tokens": tokens}


def _part_done(work: Path, part: Part) -> bool:
    try:
        BinidxReader(work / part.name)
        return True
    except DataError:
        return False


def _manifest(mixture: Mixture, parts: Sequence[Part], tokenizer: str) -> dict:
    stats = []
    for part in parts:
        for file in part.files:
            st = os.stat(file)
            stats.append([file, st.st_size, st.st_mtime_ns])
    return {
        "version": WORK_VERSION,
        "tokenizer": tokenizer,
        "mixture": mixture.describe(),
        "parts": [asdict(p) for p in parts],
        "inputs": stats,
    }


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def tokenize_parts(
    parts: Sequence[Part],
    work: Path,
    tokenizer: Tokenizer,
    workers: int,
    progress: bool,
) -> None:
    """Tokenize the parts not yet done, over ``workers`` processes, with a progress bar of input bytes."""
    todo = [p for p in parts if not _part_done(work, p)]
    done_bytes = sum(p.size for p in parts) - sum(p.size for p in todo)
    bar = tqdm(
        total=sum(p.size for p in parts),
        initial=done_bytes,
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        if not todo:
            return
        if workers <= 1 or len(todo) == 1:
            _init_worker(tokenizer)
            for part in todo:
                tokenize_part(part, str(work))
                bar.update(part.size)
            return
        # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork.
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(tokenizer,),
        ) as pool:
            futures = {pool.submit(tokenize_part, part, str(work)): part for part in todo}
            try:
                for future in cf.as_completed(futures):
                    future.result()
                    bar.update(futures[future].size)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()


@dataclass
class BuildResult:
    prefix: Path
    summary: dict


def build_corpus(
    mixture: Mixture,
    out: str | os.PathLike,
    *,
    tokenizer: Tokenizer = world_tokenizer,
    workers: int | None = None,
    progress: bool = True,
    keep_work: bool = False,
) -> BuildResult:
    """Tokenize and mix ``mixture`` into the binidx corpus ``out`` (a prefix); resumable.

    ``workers``: tokenizer processes; None picks up to 4 for inputs of 32 MB or more, else 1.

    Returns the prefix and the summary (also written to ``PREFIX.json``): documents, tokens and,
    per source, documents, tokens, share of the output and how often its input was repeated.
    """
    started = time.perf_counter()
    prefix = corpus_prefix(out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    work = prefix.parent / f"{prefix.name}.work"
    parts = plan_parts(mixture)
    if not parts:
        raise DataError("the mixture's paths hold no input files")
    name = tokenizer_name(tokenizer)
    manifest = json.loads(json.dumps(_manifest(mixture, parts, name)))  # as it reads back from disk
    manifest_path = work / "manifest.json"
    if work.exists():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != manifest:  # other inputs or settings: the finished parts do not apply
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not manifest_path.exists():
        _write_json(manifest_path, manifest)

    if workers is None:  # a worker process costs seconds to start: worth it for large inputs only
        big = sum(p.size for p in parts) >= PARALLEL_BYTES
        workers = min(4, os.cpu_count() or 1) if big else 1
    tokenize_parts(parts, work, tokenizer, workers, progress)

    # Stage 2: mix. Gather every source's documents (in part order) and plan the output.
    per_source: list[list[tuple[BinidxReader, int]]] = [[] for _ in mixture.sources]
    readers = {p.name: BinidxReader(work / p.name) for p in parts}
    for part in parts:
        reader = readers[part.name]
        per_source[part.source].extend((reader, d) for d in range(reader.num_documents))
    lengths = [np.array([len(r.document(d)) for r, d in docs], dtype=np.int64) for docs in per_source]
    plan = plan_mixture(mixture, lengths)
    counts = {s.name: 0 for s in mixture.sources}
    with BinidxWriter(prefix) as writer:
        for piece in plan.pieces:
            reader, d = per_source[piece.source][piece.document]
            tokens = np.empty(piece.length + 1, dtype=np.uint16)
            tokens[:-1] = reader.document(d)[: piece.length]
            tokens[-1] = 0  # end of text
            writer.add_document(tokens)
            counts[mixture.sources[piece.source].name] += 1
    total = sum(plan.targets.values())
    summary = {
        "prefix": str(prefix),
        "tokenizer": name,
        "seed": mixture.seed,
        "documents": len(plan.pieces),
        "tokens": total,
        "seconds": round(time.perf_counter() - started, 2),
        "sources": {
            s.name: {
                "weight": s.weight,
                "input_documents": len(per_source[i]),
                "input_tokens": int(lengths[i].sum() + len(lengths[i])),
                "documents": counts[s.name],
                "tokens": plan.targets[s.name],
                "share": plan.targets[s.name] / total if total else 0.0,
                "repeats": round(plan.repeats[s.name], 4),
            }
            for i, s in enumerate(mixture.sources)
        },
    }
    _write_json(prefix.with_suffix(".json"), summary)
    del readers, per_source
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(prefix=prefix, summary=summary)


def single_source(
    paths: Sequence[str | os.PathLike],
    *,
    kind: str | None = None,
    field: str = "text",
    max_bytes: int | None = None,
    seed: int = 0,
) -> Mixture:
    """A mixture of one source made of ``paths`` (what ``eaglefinch data OUT INPUT...`` builds)."""
    source = Source(
        name="data",
        weight=1.0,
        paths=tuple(Path(p) for p in paths),
        kind=kind,
        field=field,
        max_bytes=max_bytes,
    )
    return Mixture(sources=(source,), seed=seed)
