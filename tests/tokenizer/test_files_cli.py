"""Encoding files (streamed, in one process or several) and the ``eaglefinch tokenize`` command."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from eaglefinch.cli import main
from eaglefinch.errors import TokenizerError
from eaglefinch.tokenizer import files


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory, udhr, kjv, stdlib_code):
    data = b"".join(
        [d["text"].encode() + b"\n" for d in kjv + udhr[:40]]
        + [code for _, code in stdlib_code[:3]]
        + [b" " * 3000, b"\xff\xfe invalid \xc3", "🎉".encode() * 300]
    )
    path = tmp_path_factory.mktemp("files") / "sample.txt"
    path.write_bytes(data)
    return path, data


def test_file_streamed_in_small_reads(tok, sample_file):
    path, data = sample_file
    with open(path, "rb") as handle:
        blocks = list(files.encode_stream(tok._encoder, handle.read, read_bytes=5000))
    assert len(blocks) > 10  # many reads, each encoded as it comes
    assert np.concatenate(blocks).tolist() == tok.encode_bytes(data)
    assert sum(len(b) for b in tok.encode_file(path)) == tok.count_file(path) == tok.count(data)


def test_file_in_parts_over_processes(tok, sample_file):
    path, data = sample_file
    starts = files.part_starts(tok._encoder, path, part_bytes=20_000)
    assert len(starts) > 5 and starts == sorted(set(starts))
    blocks = list(files.encode_file(tok._encoder, path, processes=2, read_bytes=7000, part_bytes=20_000))
    assert np.concatenate(blocks).tolist() == tok.encode_bytes(data)


def test_part_boundaries_skip_stretches_without_cuts(tok, tmp_path):
    path = tmp_path / "runs.txt"
    data = b"x" * 50_000 + b" the end"
    path.write_bytes(data)
    assert files.part_starts(tok._encoder, path, part_bytes=10_000) == [0, 50_000]
    blocks = files.encode_file(tok._encoder, path, processes=2, read_bytes=3000, part_bytes=10_000)
    assert np.concatenate(list(blocks)).tolist() == tok.encode_bytes(data)


def test_file_errors(tok, tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        tok.encode_file(tmp_path / "missing.txt")
    with pytest.raises(TokenizerError, match="is a directory"):
        tok.count_file(tmp_path)
    with pytest.raises(TokenizerError, match="at least 1"):
        tok.encode_file(tmp_path, processes=0)
    (tmp_path / "empty.txt").write_bytes(b"")
    assert tok.count_file(tmp_path / "empty.txt") == 0


@pytest.fixture(autouse=True)
def _shared_tokenizer(monkeypatch, tok):
    """The command builds a tokenizer per call; reuse the session's for the bundled vocabulary."""
    import eaglefinch.tokenizer as package

    real = package.WorldTokenizer
    monkeypatch.setattr(package, "WorldTokenizer", lambda vocab=None: tok if vocab is None else real(vocab))


def run_cli(capsys, *argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        old = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        try:
            code = main(["tokenize", *argv])
        finally:
            sys.stdin = old
    else:
        code = main(["tokenize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_text_ids_count_show(tok, capsys):
    code, out, _ = run_cli(capsys, "Hello", "world")
    assert code == 0 and out.split() == [str(i) for i in tok.encode("Hello world")]
    assert run_cli(capsys, "--count", "Hello world")[1] == f"{len(tok.encode('Hello world'))}\n"
    shown = run_cli(capsys, "--show", "Hi 🎉")[1].splitlines()
    assert shown[0] == f"{tok.encode('Hi')[0]}\t'Hi'" and len(shown) == len(tok.encode("Hi 🎉"))
    assert run_cli(capsys, stdin=b"from a pipe")[1].split() == [str(i) for i in tok.encode("from a pipe")]


def test_cli_decode(tok, capsys, tmp_path):
    ids = [str(i) for i in tok.encode("Grüße, 世界")]
    assert run_cli(capsys, "--decode", *ids)[1] == "Grüße, 世界\n"
    assert run_cli(capsys, "--decode", "[" + ", ".join(ids) + "]")[1] == "Grüße, 世界\n"
    code, _, err = run_cli(capsys, "--decode", "12", "x")
    assert code == 1 and "integer ids" in err
    code, _, err = run_cli(capsys, "--decode", "70000")
    assert code == 1 and "id 70000 at position 0 is not in the vocabulary" in err
    assert run_cli(capsys, "--decode", "--errors", "replace", "70000")[1] == "\ufffd\n"


def test_cli_files(tok, capsys, tmp_path, sample_file):
    path, data = sample_file
    ids = tok.encode_bytes(data)
    assert run_cli(capsys, "-f", str(path), "--count")[1] == f"{len(ids)}\n"
    assert run_cli(capsys, "-f", str(path), "--count", "-p", "2")[1] == f"{len(ids)}\n"
    code, out, _ = run_cli(capsys, "-f", str(path))
    assert code == 0 and [int(w) for w in out.split()] == ids
    binary = tmp_path / "ids.bin"
    assert run_cli(capsys, "-f", str(path), "-o", str(binary))[0] == 0
    assert np.fromfile(binary, dtype="<u2").tolist() == ids
    # Back: the exact bytes (not all UTF-8 here) to a file; to the terminal only with --errors replace.
    restored = tmp_path / "restored.txt"
    assert run_cli(capsys, "--decode", "-f", str(binary), "-o", str(restored))[0] == 0
    assert restored.read_bytes() == data
    code, _, err = run_cli(capsys, "--decode", "-f", str(binary))
    assert code == 1 and "--errors replace" in err
    as_text = tmp_path / "ids.txt"
    run_cli(capsys, "-f", str(path), "-o", str(as_text))
    assert run_cli(capsys, "--decode", "-f", str(as_text), "--count")[1] == f"{len(ids)}\n"


def test_cli_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "-f", str(tmp_path / "missing.txt"))
    assert code == 1 and "no such file" in err
    code, _, err = run_cli(capsys, "some", "text", "-f", "x.txt")
    assert code == 1 and "not both" in err
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    code, _, err = run_cli(capsys, "--decode", "-f", str(tmp_path / "odd.bin"))
    assert code == 1 and "even size" in err
