"""Ids a World model can output but no text holds (65530..65535) are never generated."""

from __future__ import annotations

import threading

import pytest
import torch

from eaglefinch import RWKVConfig, WorldTokenizer
from eaglefinch.checkpoint import model_from_state_dict
from eaglefinch.generation import start
from eaglefinch.generation.sampling import SamplingConfig
from eaglefinch.serve.engine import Engine, Request
from eaglefinch.testing import random_state_dict

FAVOURED = 65533  # undefined in the World vocabulary


@pytest.fixture(scope="module")
def model():
    """A random World-vocabulary model whose every output puts most of the mass on ``FAVOURED``."""
    config = RWKVConfig("6.0", n_layer=1, n_embd=64, head_size=32, vocab_size=65536)
    model = model_from_state_dict(random_state_dict(config, seed=3), dtype=torch.float32)
    with torch.no_grad():
        model.ln_out.weight.zero_()
        model.ln_out.bias.fill_(1.0)  # every hidden state is all ones
        model.head.weight.mul_(0.01)
        model.head.weight[FAVOURED] = 1.0  # logit 64 against about 0
    return model


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "top_p": 1.0}])
def test_generate_never_picks_an_undefined_id(model, sampling):
    logits, _ = model(torch.tensor([[33]]))
    assert int(logits[0, -1].argmax()) == FAVOURED  # what an unguarded sampler would pick
    tok = WorldTokenizer()
    generation = start(model, tok, "Hello", max_new_tokens=12, seed=0, stop_tokens=(), **sampling)
    text = "".join(piece for _, piece in generation.stream())
    tokens = generation.new_tokens[0]
    assert len(tokens) == 12 and not set(tokens) & set(tok.undefined_ids(65536))
    assert text == tok.decode(tokens)


def test_the_server_engine_never_picks_an_undefined_id(model):
    tok = WorldTokenizer()
    engine = Engine(model, tok, max_batch=2).start()
    done = threading.Event()
    events = []

    def emit(event):
        events.append(event)
        if event.kind in ("done", "error"):
            done.set()

    sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=0)
    engine.submit(Request(tok.encode("Hello"), 12, sampling, emit, stop_tokens=()))
    try:
        assert done.wait(60)
    finally:
        engine.stop()
    last = events[-1]
    assert last.kind == "done", last.text
    assert len(last.tokens) == 12 and not set(last.tokens) & set(tok.undefined_ids(65536))
