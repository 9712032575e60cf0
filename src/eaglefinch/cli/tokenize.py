"""``eaglefinch tokenize``: text or a file to World token ids, ids back to text, token counts."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from eaglefinch.errors import TokenizerError

EPILOG = """\
examples:
  eaglefinch tokenize "Hello world"                 ids, space separated
  eaglefinch tokenize --show "Hello world"          one token a line: id and its bytes
  eaglefinch tokenize --count "Hello world"         number of tokens
  eaglefinch tokenize -f book.txt -o book.bin       a file of any size to uint16 ids (streamed)
  eaglefinch tokenize -f big.txt --count -p 2       count with two processes
  eaglefinch tokenize --decode 33155 40213          ids back to text
  eaglefinch tokenize --decode -f book.bin          a .bin of uint16 ids (or a text file of ids)
  echo "some text" | eaglefinch tokenize            no TEXT and no --file: read standard input
"""

_ID_SEPARATORS = re.compile(r"[\s,\[\]]+")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="text or a file to World token ids, ids to text, token counts",
        description="Encode text with the RWKV World tokenizer (greedy longest match over UTF-8 "
        "bytes, the vocabulary rwkv_vocab_v20230424), decode ids, or count tokens.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "text", nargs="*", help="text to encode (words are joined by spaces), or ids with --decode"
    )
    p.add_argument(
        "-f", "--file", help="read this file instead ('-' for standard input); encoded as raw bytes"
    )
    p.add_argument("-d", "--decode", action="store_true", help="turn ids into text")
    p.add_argument("-c", "--count", action="store_true", help="print only the number of tokens")
    p.add_argument("-s", "--show", action="store_true", help="print each token's id and bytes, one a line")
    p.add_argument(
        "-o",
        "--output",
        help="write here instead of standard output: ids to NAME.bin are "
        "uint16 little-endian, to any other name text; --decode writes the exact bytes",
    )
    p.add_argument("-p", "--processes", type=int, default=1, help="worker processes for --file (default 1)")
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="--decode: unknown ids and bytes that are not UTF-8 are an error, or U+FFFD",
    )
    p.add_argument("--vocab", help="another vocabulary file in the rwkv_vocab format")
    p.set_defaults(func=run_tokenize)


def run_tokenize(args: argparse.Namespace) -> int:
    from eaglefinch.tokenizer import WorldTokenizer

    if args.processes < 1:
        raise TokenizerError(f"--processes must be at least 1, not {args.processes}")
    if args.text and args.file:
        raise TokenizerError("give TEXT or --file, not both")
    tokenizer = WorldTokenizer(args.vocab)
    if args.decode:
        return _decode(tokenizer, args)
    if args.file and args.file != "-":
        return _encode_file(tokenizer, args)
    data = " ".join(args.text).encode("utf-8") if args.text else _stdin_bytes()
    ids = tokenizer.encode_bytes(data)
    if args.count:
        _write_text(args.output, f"{len(ids)}\n")
    elif args.show:
        _write_text(args.output, "".join(f"{i}\t{_shown(tokenizer.id_to_bytes(i))}\n" for i in ids))
    elif args.output and args.output.endswith(".bin"):
        _write_bin(tokenizer, args.output, [ids])
    else:
        _write_text(args.output, " ".join(map(str, ids)) + "\n")
    return 0


def _encode_file(tokenizer, args: argparse.Namespace) -> int:
    blocks = tokenizer.encode_file(args.file, processes=args.processes)
    if args.count:
        _write_text(args.output, f"{sum(len(ids) for ids in blocks)}\n")
    elif args.show:
        raise TokenizerError("--show is for TEXT; use it on a short text")
    elif args.output and args.output.endswith(".bin"):
        _write_bin(tokenizer, args.output, blocks)
    elif args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            _write_ids(out, blocks)
    else:
        _write_ids(sys.stdout, blocks)
    return 0


def _write_ids(out, blocks) -> None:
    first = True
    for ids in blocks:
        if len(ids):
            out.write(("" if first else " ") + " ".join(map(str, ids.tolist())))
            first = False
    out.write("\n")


def _write_bin(tokenizer, path: str, blocks) -> None:
    import numpy as np

    if tokenizer.vocab_size > 1 << 16:
        raise TokenizerError(f"{path}: ids of this vocabulary do not fit in uint16")
    with open(path, "wb") as out:
        for ids in blocks:
            out.write(np.asarray(ids, dtype="<u2").tobytes())


def _decode(tokenizer, args: argparse.Namespace) -> int:
    import numpy as np

    if args.file and args.file != "-" and args.file.endswith(".bin"):
        raw = _read_file(args.file)
        if len(raw) % 2:
            raise TokenizerError(
                f"{args.file}: a .bin of uint16 ids has an even size, this has {len(raw)} bytes"
            )
        ids = np.frombuffer(raw, dtype="<u2").astype(np.int64)
    else:
        if args.text:
            source = " ".join(args.text)
        elif args.file and args.file != "-":
            source = _read_file(args.file).decode("utf-8", errors="replace")
        else:
            source = _stdin_bytes().decode("utf-8", errors="replace")
        ids = _parse_ids(source)
    if args.count:
        _write_text(args.output, f"{len(ids)}\n")
        return 0
    data = tokenizer.decode_bytes(ids, errors=args.errors)
    if args.output:
        Path(args.output).write_bytes(data)  # the exact bytes, UTF-8 or not
        return 0
    try:
        text = data.decode("utf-8", errors=args.errors)
    except UnicodeDecodeError as error:
        raise TokenizerError(
            f"the ids do not decode to UTF-8 text ({error.reason} at byte {error.start}); "
            "use --errors replace, or -o FILE for the exact bytes"
        ) from None
    sys.stdout.write(text + "\n")
    return 0


def _parse_ids(source: str) -> list[int]:
    words = [w for w in _ID_SEPARATORS.split(source) if w]
    ids = []
    for position, word in enumerate(words):
        try:
            ids.append(int(word))
        except ValueError:
            raise TokenizerError(f"--decode takes integer ids; item {position + 1} is {word!r}") from None
    return ids


def _shown(piece: bytes) -> str:
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, not a file") from None


def _stdin_bytes() -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        raise TokenizerError("nothing to tokenize: give TEXT, --file, or pipe text in")
    return sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")


def _write_text(path: str | None, text: str) -> None:
    if path:
        Path(path).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
