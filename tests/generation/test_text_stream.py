"""Incremental decoding: whole characters only, stop strings cut across token boundaries."""

from __future__ import annotations

from eaglefinch.generation.text import TextStream


def feed(stream: TextStream, chunks: list[bytes]) -> list[str]:
    pieces = [stream.push(c) for c in chunks]
    pieces.append(stream.flush())
    return pieces


def test_a_character_split_over_tokens_comes_out_whole():
    euro, emoji = "€".encode(), "🐦".encode()  # 3 and 4 bytes
    chunks = [b"a", euro[:1], euro[1:2], euro[2:], emoji[:2], emoji[2:3], emoji[3:] + b"b"]
    pieces = feed(TextStream(), chunks)
    assert pieces == ["a", "", "", "€", "", "", "🐦b", ""]


def test_invalid_bytes_become_replacement_characters_and_incomplete_tail_at_the_end():
    pieces = feed(TextStream(), [b"x\xff", b"y", "€".encode()[:2]])
    assert "".join(pieces) == "x\ufffdy\ufffd"
    assert pieces[-1] == "\ufffd"  # the incomplete character is only given up at the end


def test_stop_string_across_pieces_is_cut():
    stream = TextStream(stop=["\n\nUser:"])
    pieces = feed(stream, [b"Hello", b"\n", b"\nUs", b"er: more"])
    assert "".join(pieces) == "Hello"
    assert stream.stopped and stream.text == "Hello"


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    stream = TextStream(stop=["STOP"])
    assert stream.push(b"go ST") == "go "  # "ST" might start STOP
    assert stream.push(b"ART") == "START"
    assert stream.flush() == ""
    assert not stream.stopped and stream.text == "go START"


def test_earliest_of_several_stop_strings_wins():
    stream = TextStream(stop=["cd", "b"])
    assert "".join(feed(stream, [b"abcd"])) == "a"


def test_stop_string_inside_one_token_and_nothing_after_stopping():
    stream = TextStream(stop=["."])
    assert stream.push(b"end. Next") == "end"
    assert stream.push(b"more") == "" and stream.flush() == ""
