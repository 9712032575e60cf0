"""Model behaviour: shapes, state carrying, batching, kernel choice, and clear errors."""

from __future__ import annotations

import pytest
import torch

from eaglefinch import RWKV, RWKVConfig, RWKVState
from eaglefinch.errors import ConfigError, StateError
from eaglefinch.testing import random_state_dict

CONFIGS = {
    "eagle": RWKVConfig("5.2", n_layer=2, n_embd=128, vocab_size=300),
    "finch": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=300),
}


@pytest.fixture(params=list(CONFIGS))
def model(request):
    config = CONFIGS[request.param]
    model = RWKV(config, init=False)
    model.load_state_dict(random_state_dict(config, seed=7))
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@torch.no_grad()
def test_shapes_and_last_only(model):
    tokens = torch.randint(0, 300, (3, 11))
    logits, state = model(tokens)
    assert logits.shape == (3, 11, 300) and logits.dtype == torch.float32
    assert state.batch_size == 3 and state.wkv.shape == (2, 3, 2, 64, 64)
    last, last_state = model(tokens, last_only=True)
    assert last.shape == (3, 1, 300)
    assert rel_err(last[:, 0], logits[:, -1]) < 1e-5
    # the last block's channel mixing ran on the last position alone; the state is the whole one's
    for name, tensor in state.tensors().items():
        assert torch.equal(last_state.tensors()[name], tensor), name


def test_last_only_with_gradient_checkpointing(model):
    """The recomputed blocks get ``last_only`` too: the hidden states of the last position alone."""
    tokens = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        full, _ = model(tokens)
    model.set_grad_checkpointing(True)
    try:
        hidden, _ = model.forward_hidden(tokens, last_only=True)
        last, _ = model(tokens, last_only=True)
    finally:
        model.set_grad_checkpointing(False)
    assert hidden.shape == (2, 1, model.config.n_embd) and last.shape == (2, 1, 300)
    assert rel_err(last[:, 0].detach(), full[:, -1]) < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 5, 70])
def test_prefix_state_suffix_equals_one_pass(model, split):
    tokens = torch.randint(0, 300, (2, 90))
    whole, whole_state = model(tokens)
    first, state = model(tokens[:, :split])
    rest, state = model(tokens[:, split:], state)
    assert rel_err(torch.cat([first, rest], 1), whole) < 1e-4
    assert rel_err(state.wkv, whole_state.wkv) < 1e-4


@torch.no_grad()
def test_token_by_token_equals_one_pass(model):
    tokens = torch.randint(0, 300, (2, 20))
    whole, _ = model(tokens)
    state, steps = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    assert rel_err(torch.cat(steps, 1), whole) < 1e-4


@torch.no_grad()
def test_batch_equals_rows_alone(model):
    tokens = torch.randint(0, 300, (3, 40))
    batch, state = model(tokens)
    for row in range(3):
        alone, alone_state = model(tokens[row : row + 1])
        assert rel_err(batch[row : row + 1], alone) < 1e-5
        assert rel_err(state.select(row).wkv, alone_state.wkv) < 1e-5


@torch.no_grad()
def test_chunked_and_recurrent_kernels_agree(model):
    tokens = torch.randint(0, 300, (2, 150))
    model.set_wkv_mode("recurrent")
    slow, slow_state = model(tokens)
    model.set_wkv_mode("chunked")
    fast, fast_state = model(tokens)
    model.set_wkv_mode("auto")
    assert rel_err(fast, slow) < 1e-4
    assert rel_err(fast_state.wkv, slow_state.wkv) < 1e-4


def test_gradients_flow_to_every_parameter(model):
    tokens = torch.randint(0, 300, (2, 33))
    loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@torch.no_grad()
def test_bf16_model_stays_close_to_fp32(model):
    tokens = torch.randint(0, 300, (1, 64))
    reference, _ = model(tokens)
    from eaglefinch.checkpoint import cast_model

    cast_model(model, torch.bfloat16)
    approx, state = model(tokens)
    assert state.wkv.dtype == torch.float32
    assert rel_err(approx, reference) < 5e-2


def test_state_helpers(model):
    config = model.config
    state = RWKVState.zeros(config, 1)
    forked = state.repeat(4)
    assert forked.batch_size == 4
    both = RWKVState.cat([forked.select([0, 1]), forked.select(3)])
    assert both.batch_size == 3
    copy = both.clone()
    copy.wkv += 1
    assert both.wkv.abs().sum() == 0
    with pytest.raises(StateError, match="rows"):
        model(torch.zeros(2, 3, dtype=torch.long), state)
    other = RWKVState.zeros(RWKVConfig("6.0", n_layer=3, n_embd=128, vocab_size=300), 1)
    with pytest.raises(StateError, match="shape"):
        model(torch.zeros(1, 3, dtype=torch.long), other)


@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.tensor([[1, 2, 300]]), "outside this model's vocabulary"),
        (torch.tensor([[1, -1]]), "outside"),
        (torch.tensor([1, 2, 3]), "shape"),
        (torch.tensor([[1.0, 2.0]]), "integer"),
        (torch.zeros(1, 0, dtype=torch.long), "at least one"),
    ],
    ids=["too-large", "negative", "1-d", "float", "empty"],
)
def test_bad_tokens_are_clear_errors(model, tokens, match):
    with pytest.raises(ConfigError, match=match):
        model(tokens)
