"""The binidx format against the Megatron / GPT-NeoX layout, written out by hand here."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from eaglefinch.errors import DataError
from eaglefinch.train.binidx import BinidxReader, BinidxWriter

DOCS = [[5, 6, 7, 0], [300, 0], [65535, 1, 2, 3, 4, 0], [0]]


def write_by_hand(prefix, docs) -> None:
    """The layout as RWKV-LM's make_data.py + binidx.py write it: one item per document, uint16."""
    sizes = [len(d) for d in docs]
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1] * 2]).astype(np.int64)
    with open(f"{prefix}.bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype="<u2").tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", 8))  # uint16
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(docs) + 1))
        f.write(np.asarray(sizes, dtype="<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.arange(len(docs) + 1, dtype="<i8").tobytes())


def parse_by_hand(prefix):
    raw = open(f"{prefix}.idx", "rb").read()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", raw[9:17])
    (code,) = struct.unpack("<B", raw[17:18])
    n, m = struct.unpack("<QQ", raw[18:34])
    sizes = np.frombuffer(raw, "<i4", n, 34)
    pointers = np.frombuffer(raw, "<i8", n, 34 + 4 * n)
    doc_idx = np.frombuffer(raw, "<i8", m, 34 + 12 * n)
    assert len(raw) == 34 + 12 * n + 8 * m
    return version, code, sizes, pointers, doc_idx, np.fromfile(f"{prefix}.bin", dtype="<u2")


def test_writer_matches_the_megatron_layout(tmp_path):
    prefix = tmp_path / "corpus"
    with BinidxWriter(prefix) as writer:
        for doc in DOCS:
            writer.add_document(np.asarray(doc, dtype=np.uint16))
    version, code, sizes, pointers, doc_idx, data = parse_by_hand(prefix)
    assert (version, code) == (1, 8)
    assert sizes.tolist() == [4, 2, 6, 1]
    assert pointers.tolist() == [0, 8, 12, 24]  # byte offsets
    assert doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert data.tolist() == [t for d in DOCS for t in d]


def test_reader_reads_a_hand_written_corpus(tmp_path):
    prefix = tmp_path / "hand"
    write_by_hand(prefix, DOCS)
    reader = BinidxReader(f"{prefix}.idx")  # any of PREFIX, PREFIX.bin, PREFIX.idx
    assert len(reader) == reader.num_documents == len(DOCS)
    assert reader.dtype == np.uint16
    assert [reader[i].tolist() for i in range(len(DOCS))] == DOCS
    assert [reader.document(i).tolist() for i in range(len(DOCS))] == DOCS
    assert reader.tokens.tolist() == [t for d in DOCS for t in d]
    assert reader.num_tokens == 13


def test_round_trip_of_random_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 65536, size=int(rng.integers(1, 50))).astype(np.uint16) for _ in range(200)]
    with BinidxWriter(tmp_path / "r") as writer:
        for doc in docs:
            writer.add_document(doc)
    reader = BinidxReader(tmp_path / "r")
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(reader.document(i), doc)


def test_out_of_range_ids_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not fit"):
        with BinidxWriter(tmp_path / "x") as writer:
            writer.add_document(np.array([1, 70000]))
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.idx").exists()
    assert not list(tmp_path.iterdir())  # the temporary files went too


@pytest.mark.parametrize("damage", ["missing-idx", "magic", "version", "truncated-idx", "truncated-bin"])
def test_damaged_corpus_gives_one_clear_error(tmp_path, damage):
    prefix = tmp_path / "c"
    write_by_hand(prefix, DOCS)
    idx, binary = tmp_path / "c.idx", tmp_path / "c.bin"
    if damage == "missing-idx":
        idx.unlink()
    elif damage == "magic":
        idx.write_bytes(b"NOTANIDX!" + idx.read_bytes()[9:])
    elif damage == "version":
        raw = bytearray(idx.read_bytes())
        raw[9:17] = struct.pack("<Q", 2)
        idx.write_bytes(bytes(raw))
    elif damage == "truncated-idx":
        idx.write_bytes(idx.read_bytes()[:40])
    else:
        binary.write_bytes(binary.read_bytes()[:10])
    with pytest.raises(DataError) as error:
        BinidxReader(prefix)
    assert "\n" not in str(error.value)
