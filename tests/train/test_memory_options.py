"""Memory options of the trainer: recomputed blocks and a chunked head give the same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import model_from_state_dict
from eaglefinch.finetune.state_tuning import InitialState
from eaglefinch.testing import random_state_dict
from eaglefinch.train.loop import LossModule

CONFIG = RWKVConfig("6.0", n_layer=2, n_embd=64, head_size=32, vocab_size=97)


def gradients(module: LossModule, inputs, targets, **kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module(inputs, targets, **kwargs)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("denominator", [None, 7.5])
@pytest.mark.parametrize(
    "options", [{"grad_cp": True}, {"head_chunk": 5}, {"grad_cp": True, "head_chunk": 8}]
)
def test_recomputing_changes_nothing_but_memory(options, denominator):
    model = model_from_state_dict(random_state_dict(CONFIG, seed=2), dtype=torch.float32).train()
    initial = InitialState(model, tune_shift=True)  # gradients reach the initial state too
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 97, (3, 13), generator=gen)
    targets = torch.randint(0, 97, (3, 13), generator=gen)
    targets[0, :6] = -100  # a masked prompt
    targets[2, 10:] = -100  # padding
    kwargs = {"denominator": denominator, "l2_scale": 0.5}
    plain_loss, plain = gradients(LossModule(model, 1e-2, initial), inputs, targets, **kwargs)
    model.set_grad_checkpointing(options.get("grad_cp", False))
    module = LossModule(model, 1e-2, initial, head_chunk=options.get("head_chunk", 0))
    loss, grads = gradients(module, inputs, targets, **kwargs)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain.keys() and "initial_state.wkv" in grads
    # Recomputed blocks repeat the same arithmetic; the fused head sums its log-sum-exp in another
    # order than F.cross_entropy (same formula: test_chunked_loss checks it in float64).
    atol = 1e-6 if options.get("head_chunk") else 1e-7
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=atol, msg=name)


def test_chunked_head_with_nothing_to_train_is_zero():
    model = model_from_state_dict(random_state_dict(CONFIG, seed=2), dtype=torch.float32)
    module = LossModule(model, 1e-2, head_chunk=4)
    loss = module(torch.ones(2, 6, dtype=torch.long), torch.full((2, 6), -100))
    loss.backward()
    assert loss.item() == 0.0
