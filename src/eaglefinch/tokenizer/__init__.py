"""The RWKV World tokenizer: greedy longest match over UTF-8 bytes, with the bundled
``rwkv_vocab_v20230424`` vocabulary (Apache-2.0, see ``NOTICE`` in this directory)."""

from eaglefinch.tokenizer.stream import StreamDecoder
from eaglefinch.tokenizer.vocab import END_OF_TEXT, Vocabulary, load_vocab, parse_vocab
from eaglefinch.tokenizer.world import WorldTokenizer

__all__ = ["END_OF_TEXT", "StreamDecoder", "Vocabulary", "WorldTokenizer", "load_vocab", "parse_vocab"]
