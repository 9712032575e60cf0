"""The engine's row buffer: joining and leaving rows copy single rows, and no row's state is lost."""

from __future__ import annotations

import torch

from eaglefinch import RWKVConfig
from eaglefinch.model.state import RWKVState
from eaglefinch.serve.engine import _BatchStates

CONFIG = RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=300)


def row(value: float) -> RWKVState:
    state = RWKVState.zeros(CONFIG, 1)
    for t in state.tensors().values():
        t.fill_(value)
    return state


def values(states: _BatchStates) -> list[float]:
    batch = states.state
    rows = [float(batch.wkv[0, i, 0, 0, 0]) for i in range(batch.batch_size)]
    for t in batch.tensors().values():  # every tensor of a row holds that row's value
        assert torch.equal(t.flatten(2).amin(-1), t.flatten(2).amax(-1))
        assert t[0].flatten(1)[:, 0].tolist() == rows
    return rows


def test_rows_join_grow_the_buffer_and_leave_by_moving_the_last_rows():
    states = _BatchStates(capacity=20)
    for i in range(11):  # past the first buffer of 8 rows
        states.append(row(i))
    assert values(states) == list(range(11))
    order = states.keep([0, 2, 3, 5, 6, 7, 9])  # rows 1, 4, 8 and 10 leave
    assert sorted(order) == [0, 2, 3, 5, 6, 7, 9]
    assert values(states) == [float(i) for i in order]
    assert order == [0, 7, 2, 3, 9, 5, 6]  # rows 7 and 9 fill the places of rows 1 and 4
    states.append(row(42))
    assert values(states) == [float(i) for i in order] + [42.0]
    assert states.keep([]) == [] and states.state is None
