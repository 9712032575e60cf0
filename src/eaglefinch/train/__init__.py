"""Training: corpora (binidx), data mixtures, the official recipe, checkpoints, many processes."""

from eaglefinch.train.binidx import BinidxReader, BinidxWriter
from eaglefinch.train.corpus import build_corpus
from eaglefinch.train.loop import TrainConfig, TrainResult, train
from eaglefinch.train.mixture import Mixture, Source

__all__ = [
    "BinidxReader",
    "BinidxWriter",
    "Mixture",
    "Source",
    "TrainConfig",
    "TrainResult",
    "build_corpus",
    "train",
]
