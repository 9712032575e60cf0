"""The pieces of the official recipe: optimiser groups, schedule, L2Wrap, and the sample order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eaglefinch import RWKV, RWKVConfig
from eaglefinch.errors import ConfigError, DataError
from eaglefinch.train.loop import LossModule, TrainConfig
from eaglefinch.train.optim import make_optimizer, set_lr
from eaglefinch.train.sampler import TokenWindows
from eaglefinch.train.schedule import Schedule

TINY = {
    "5.2": RWKVConfig("5.2", n_layer=2, n_embd=64, head_size=32, vocab_size=300),
    "6.0": RWKVConfig("6.0", n_layer=2, n_embd=64, head_size=32, vocab_size=300),
}


@pytest.mark.parametrize("version", ["5.2", "6.0"])
def test_parameter_groups_follow_rwkv_lm(version):
    """RWKV-LM configure_optimizers with layerwise_lr: time_decay 2x, time_* and LoRA 1x without
    weight decay, matrices (squeezed dim >= 2) with weight decay, everything else without."""
    model = RWKV(TINY[version])
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    set_lr(optimizer, 1e-3)
    by_param = {}
    for group in optimizer.param_groups:
        for name in group["names"]:
            by_param[name] = (group["lr"], group["weight_decay"])
    expected = {}
    for name, p in model.named_parameters():
        leaf = name.split(".")[-1]
        if "time_decay" in leaf and not leaf.endswith(("_w1", "_w2")):
            expected[name] = (2e-3, 0.0)
        elif (
            "_w1" in name or "_w2" in name or "time_mix" in name or "time_maa" in name or "time_faaaa" in name
        ):
            expected[name] = (1e-3, 0.0)
        elif len(p.squeeze().shape) >= 2:
            expected[name] = (1e-3, 0.1)
        else:
            expected[name] = (1e-3, 0.0)
    assert by_param == expected
    assert by_param["emb.weight"] == (1e-3, 0.1) and by_param["head.weight"] == (1e-3, 0.1)
    assert by_param["blocks.0.ln1.weight"] == (1e-3, 0.0)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-8
    assert isinstance(optimizer, torch.optim.AdamW)


def test_schedule_warmup_cosine_and_exponential():
    cos = Schedule(lr=1e-3, lr_final=1e-4, warmup_steps=10, kind="cosine")
    assert cos(0, 0.0) == pytest.approx(1e-5)  # warmup starts at 1% of the peak, as RWKV-LM
    assert cos(5, 0.0) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert cos(10, 0.0) == pytest.approx(1e-3)
    assert cos(50, 0.5) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert cos(99, 1.0) == pytest.approx(1e-4)
    exp = Schedule(lr=1e-3, lr_final=1e-5, warmup_steps=0, kind="exp")
    assert exp(0, 0.5) == pytest.approx(1e-4)  # log-linear: the geometric mean half way
    assert Schedule(1e-3, 1e-4, 0, "constant")(7, 0.9) == 1e-3
    with pytest.raises(ConfigError):
        Schedule(lr=1e-3, lr_final=1e-2)


def test_l2wrap_adds_the_official_gradient():
    """RWKV-LM's L2Wrap: d/dlogits gains 1e-4 / (B*T) * max at each position's argmax."""
    torch.manual_seed(0)
    model = RWKV(TINY["6.0"])
    tokens = torch.randint(1, 300, (2, 9))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    plain = LossModule(model, l2wrap=0.0)
    wrapped = LossModule(model, l2wrap=1e-4)
    model.zero_grad()
    wrapped(inputs, targets).backward()
    got = model.head.weight.grad.clone()
    model.zero_grad()
    hidden, _ = model.forward_hidden(inputs)
    logits = model.head(hidden).float()
    loss = F.cross_entropy(logits.reshape(-1, 300), targets.reshape(-1))
    top, ids = logits.detach().max(-1, keepdim=True)
    extra = torch.zeros_like(logits).scatter_(-1, ids, top * 1e-4 / (2 * 8))
    torch.autograd.backward([loss, logits], [torch.ones(()), extra])
    torch.testing.assert_close(got, model.head.weight.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # the loss value itself is the plain cross-entropy
        assert wrapped(inputs, targets).item() == plain(inputs, targets).item()


def test_windows_tile_each_epoch_and_ranks_share_the_stream():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = TokenWindows(tokens, ctx_len=16, seed=3, val_tokens=100)
    n_slots = (1000 - 1) // 16
    held_out = [int(s) * 16 for s in windows.val_slots]
    assert len(held_out) == 7  # ceil(100 / 16) whole slots
    assert windows.n_windows == n_slots - 7
    starts = sorted(windows.start_of(i) for i in range(windows.n_windows))
    assert sorted(starts + held_out) == [16 * k for k in range(n_slots)]  # every slot once, none twice
    assert max(held_out) - min(held_out) > 300  # spread over the stream, not one block
    assert windows.start_of(5) == TokenWindows(tokens, 16, seed=3, val_tokens=100).start_of(5)
    n = windows.n_windows
    assert [windows.start_of(i) for i in range(n)] != [windows.start_of(n + i) for i in range(n)]
    x, y = windows.batch(10, 4)
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    # two processes taking their halves of a global batch see exactly the single-process batch
    halves = torch.cat([windows.batch(10, 2)[0], windows.batch(12, 2)[0]])
    assert torch.equal(halves, x)
    val = list(windows.val_batches(batch_size=2))
    assert sum(v[0].shape[0] for v in val) == 7
    assert sorted(int(v[0][i, 0]) for v in val for i in range(v[0].shape[0])) == held_out


def test_large_corpora_use_an_affine_order(monkeypatch):
    import eaglefinch.train.sampler as sampler

    monkeypatch.setattr(sampler, "PERMUTATION_LIMIT", 10)
    windows = TokenWindows(np.zeros(64 * 37 + 1, dtype=np.uint16), ctx_len=64, seed=1, val_tokens=64 * 3)
    assert sorted(windows.start_of(i) for i in range(34)) == [64 * k for k in range(34)]
    assert windows.val_slots.tolist() == [34, 35, 36]  # held out at the end


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": None}, "length"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 1e-3, "lr_final": 1e-2}, "lr_final"),
        ({"precision": "fp8"}, "precision"),
        ({"schedule": "linear"}, "schedule"),
        ({"eval_every": 5}, "val_tokens"),
        ({"strategy": "zero3"}, "strategy"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    options = {"data": "x", "out": "y", "steps": 10, **kwargs}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_too_small_corpus_is_refused():
    with pytest.raises(DataError, match="ctx_len"):
        TokenWindows(np.zeros(10, dtype=np.uint16), ctx_len=16)
    with pytest.raises(DataError, match="held-out"):
        TokenWindows(np.zeros(40, dtype=np.uint16), ctx_len=16, val_tokens=30)
    assert TokenWindows(np.zeros(17, dtype=np.uint16), ctx_len=16).n_windows == 1
