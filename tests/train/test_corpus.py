"""Corpus building: reading sources, mixing by weight, parallel and resumable tokenization.

Builds with the World tokenizer (and, marked slow, the official ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``)
check every output document against the encoding of an input. The other tests use World's
single-byte ids (1 + byte, valid but long World encodings), which cost nothing to set up.
"""

from __future__ import annotations

import functools
import gzip
import json
import os

import numpy as np
import pytest

from eaglefinch.errors import DataError
from eaglefinch.train import corpus as corpus_mod
from eaglefinch.train.binidx import BinidxReader
from eaglefinch.train.corpus import build_corpus, plan_parts, tokenize_parts
from eaglefinch.train.mixture import Mixture, plan_mixture

rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
VOCAB = os.path.join(os.path.dirname(rwkv_tokenizer.__file__), "rwkv_vocab_v20230424.txt")
OFFICIAL = functools.partial(rwkv_tokenizer.TRIE_TOKENIZER, VOCAB)


@pytest.fixture(scope="module")
def official():
    return OFFICIAL()


class ByteTokenizer:
    """Every UTF-8 byte as its own World id (ids 1..256 are the single bytes)."""

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - 1 for i in ids).decode("utf-8")


@pytest.fixture
def inputs(tmp_path):
    """English in jsonl (one gzipped), multilingual in plain text files, code in a folder."""
    english = [f"Verse {i}: In the beginning was the word, and the word was {i}." for i in range(60)]
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in english[:40]), "utf-8")
    with gzip.open(tmp_path / "en2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(english[40:]))
    ml = tmp_path / "ml"
    ml.mkdir()
    for i, text in enumerate(
        [
            "Tous les êtres humains naissent libres.",
            "Alle Menschen sind frei geboren.",
            "人人生而自由，在尊严和权利上一律平等。",
            "Все люди рождаются свободными.",
        ]
    ):
        (ml / f"{i}.txt").write_text(text * 3, "utf-8")
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "a.py").write_text("def f(x):\n    return x * 2\n" * 5, "utf-8")
    (code / "b.rs").write_text('fn main() { println!("hi"); }\n' * 4, "utf-8")
    (code / "notes.bin").write_bytes(b"\xff\xfe binary")  # not a code file: ignored
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "a.py").write_text("ignored = True\n", "utf-8")
    return {"english": english, "dir": tmp_path}


def spec(root, tokens=None, seed=0):
    return Mixture.from_dict(
        {
            "seed": seed,
            "tokens": tokens,
            "sources": [
                {"name": "english", "weight": 0.70, "paths": ["en.jsonl", "en2.jsonl.gz"]},
                {"name": "multilingual", "weight": 0.15, "paths": ["ml"], "kind": "text"},
                {"name": "code", "weight": 0.15, "paths": ["code"]},
            ],
        },
        base=root,
    )


def source_texts(inputs) -> dict[str, list[str]]:
    root = inputs["dir"]
    ml = [(root / "ml" / f"{i}.txt").read_text("utf-8") for i in range(4)]
    code = [(root / "code" / "b.rs").read_text("utf-8"), (root / "code" / "pkg" / "a.py").read_text("utf-8")]
    return {"english": inputs["english"], "multilingual": ml, "code": code}


def check_build(result, mixture, inputs, tokenizer, tokens):
    """Shares as weighted, every document ends with 0 and decodes to the start of an input."""
    reader = BinidxReader(result.prefix)
    summary = json.loads(result.prefix.with_suffix(".json").read_text("utf-8"))
    assert summary == json.loads(json.dumps(result.summary))
    assert reader.num_tokens == summary["tokens"] == tokens
    assert reader.num_documents == summary["documents"]
    for name, share in mixture.shares.items():
        assert summary["sources"][name]["tokens"] == pytest.approx(share * tokens, abs=1)
    encoded = {name: [tokenizer.encode(t) for t in ts] for name, ts in source_texts(inputs).items()}
    found = {name: 0 for name in encoded}
    for d in range(reader.num_documents):
        doc = reader.document(d).tolist()
        assert doc[-1] == 0 and 0 not in doc[:-1]
        body = doc[:-1]
        owners = [name for name, docs in encoded.items() if any(list(e[: len(body)]) == body for e in docs)]
        assert owners, tokenizer.decode(body)  # every piece is (the start of) an input document
        found[owners[0]] += 1
    assert all(found.values())
    assert summary["sources"]["code"]["input_documents"] == 2  # .py and .rs; not the binary nor the cache


def test_parallel_build_with_the_world_tokenizer(inputs, monkeypatch):
    world = pytest.importorskip("eaglefinch.tokenizer")
    monkeypatch.setattr(corpus_mod, "PART_BYTES", 600)  # several parts per source
    mixture = spec(inputs["dir"], tokens=3000)
    result = build_corpus(mixture, inputs["dir"] / "out" / "mix", workers=2, progress=False)
    check_build(result, mixture, inputs, world.WorldTokenizer(), 3000)


@pytest.mark.slow
def test_build_with_the_official_tokenizer(inputs, official, monkeypatch):
    monkeypatch.setattr(corpus_mod, "PART_BYTES", 600)
    mixture = spec(inputs["dir"], tokens=3000)
    result = build_corpus(mixture, inputs["dir"] / "official", tokenizer=OFFICIAL, workers=2, progress=False)
    check_build(result, mixture, inputs, official, 3000)


def test_default_size_uses_the_scarcest_source_once(inputs):
    result = build_corpus(
        spec(inputs["dir"]), inputs["dir"] / "all", tokenizer=ByteTokenizer, workers=1, progress=False
    )
    sources = result.summary["sources"]
    limiting = min(sources, key=lambda n: sources[n]["input_tokens"] / sources[n]["weight"])
    assert sources[limiting]["tokens"] == pytest.approx(sources[limiting]["input_tokens"], abs=2)
    assert all(s["repeats"] <= 1.0 + 1e-9 for s in sources.values())


def test_interrupted_build_resumes_and_equals_a_fresh_build(inputs, monkeypatch):
    monkeypatch.setattr(corpus_mod, "PART_BYTES", 600)
    mixture = spec(inputs["dir"], tokens=2500, seed=3)
    fresh = build_corpus(mixture, inputs["dir"] / "fresh", tokenizer=ByteTokenizer, workers=1, progress=False)

    # An interrupted run: half of the parts finished, and one part with a torn temporary file.
    prefix = inputs["dir"] / "resumed"
    work = inputs["dir"] / "resumed.work"
    parts = plan_parts(mixture)
    assert len(parts) >= 4
    work.mkdir()
    name = corpus_mod.tokenizer_name(ByteTokenizer)
    corpus_mod._write_json(work / "manifest.json", corpus_mod._manifest(mixture, parts, name))
    tokenize_parts(parts[: len(parts) // 2], work, ByteTokenizer, workers=1, progress=False)
    (work / f".{parts[-1].name}.bin.tmp").write_bytes(b"\x01\x02")
    done_before = {p.name: os.stat(work / f"{p.name}.bin").st_mtime_ns for p in parts[: len(parts) // 2]}

    calls = []
    original = corpus_mod.tokenize_part
    monkeypatch.setattr(corpus_mod, "tokenize_part", lambda p, w: calls.append(p.name) or original(p, w))
    resumed = build_corpus(
        mixture, prefix, tokenizer=ByteTokenizer, workers=1, progress=False, keep_work=True
    )
    assert sorted(calls) == sorted(p.name for p in parts[len(parts) // 2 :])  # only the missing parts
    assert all(os.stat(work / f"{n}.bin").st_mtime_ns == t for n, t in done_before.items())
    for suffix in (".bin", ".idx"):
        assert (
            resumed.prefix.with_suffix(suffix).read_bytes() == fresh.prefix.with_suffix(suffix).read_bytes()
        )


def test_changed_inputs_invalidate_finished_parts(inputs):
    mixture = spec(inputs["dir"], tokens=1000)
    build_corpus(
        mixture, inputs["dir"] / "c", tokenizer=ByteTokenizer, workers=1, progress=False, keep_work=True
    )
    with open(inputs["dir"] / "en.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "A new verse."}) + "\n")
    result = build_corpus(mixture, inputs["dir"] / "c", tokenizer=ByteTokenizer, workers=1, progress=False)
    assert result.summary["sources"]["english"]["input_documents"] == 61


def test_plan_is_exact_deterministic_and_repeats_when_asked():
    mixture = Mixture.from_dict(
        {
            "seed": 5,
            "tokens": 1000,
            "sources": [
                {"name": "a", "weight": 3, "paths": ["."]},
                {"name": "b", "weight": 1, "paths": ["."]},
            ],
        }
    )
    lengths = [np.array([50, 70, 20]), np.array([400, 9])]
    plan = plan_mixture(mixture, lengths)
    assert plan.targets == {"a": 750, "b": 250}
    again = plan_mixture(mixture, lengths)
    assert [(p.source, p.document, p.length) for p in plan.pieces] == [
        (p.source, p.document, p.length) for p in again.pieces
    ]
    for piece in plan.pieces:
        assert 1 <= piece.length <= lengths[piece.source][piece.document]
    assert sum(p.length + 1 for p in plan.pieces if p.source == 0) == 750
    assert plan.repeats["a"] == pytest.approx(750 / 143)  # source a (143 tokens with separators) repeats


def test_spec_files_json_and_yaml(tmp_path):
    (tmp_path / "d.txt").write_text("hello", "utf-8")
    data = {
        "seed": 1,
        "sources": [
            {"name": "x", "weight": 2, "paths": ["d.txt"]},
            {"name": "py", "weight": 1, "paths": ["{stdlib}/json"], "max_bytes": 1000},
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(data), "utf-8")
    from_json = Mixture.from_file(tmp_path / "m.json")
    assert from_json.sources[0].paths[0] == tmp_path / "d.txt"
    assert from_json.shares == {"x": 2 / 3, "py": 1 / 3}
    yaml = pytest.importorskip("yaml")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data), "utf-8")
    assert Mixture.from_file(tmp_path / "m.yaml") == from_json


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sources": []}, "at least one source"),
        ({"sources": [{"name": "x", "paths": ["nowhere.txt"]}]}, "does not exist"),
        ({"sources": [{"name": "x", "paths": ["."], "wieght": 1}]}, "unknown fields"),
        ({"sources": [{"name": "x", "paths": ["."], "weight": -1}]}, "weight must be"),
        ({"sources": [{"name": "x", "paths": ["{nope}"]}]}, "placeholder"),
        ({"sources": [{"name": "x", "paths": ["."]}], "tokens": 0}, "tokens must be"),
    ],
)
def test_bad_specs_give_one_clear_line(bad, message, tmp_path):
    with pytest.raises(DataError, match=message) as error:
        Mixture.from_dict(bad, base=tmp_path)
    assert "\n" not in str(error.value)


def test_bad_jsonl_names_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n', "utf-8")
    mixture = Mixture.from_dict({"sources": [{"name": "x", "paths": ["bad.jsonl"]}]}, base=tmp_path)
    with pytest.raises(DataError, match=r"bad\.jsonl: not JSON \(line 2"):
        build_corpus(mixture, tmp_path / "o", tokenizer=ByteTokenizer, workers=1, progress=False)
