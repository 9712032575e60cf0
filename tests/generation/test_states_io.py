"""Saved states: round trips, continuing after loading, and refusing the wrong model or file."""

from __future__ import annotations

import os

import pytest
import torch

import eaglefinch
from eaglefinch.errors import StateError
from eaglefinch.generation import Context, Generation, SamplingConfig, load_state, prefill, save_state, start


def test_round_trip_keeps_everything(finch, tmp_path):
    ctx = Context.cat([prefill(finch, [5, 6, 7]), prefill(finch, [8, 9])])
    path = tmp_path / "two.safetensors"
    save_state(path, finch, ctx)
    back = load_state(path, finch)
    assert back.tokens == [[5, 6, 7], [8, 9]]
    assert torch.equal(back.logits, ctx.logits)
    for name, tensor in ctx.state.tensors().items():
        assert torch.equal(back.state.tensors()[name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["two.safetensors"]  # no temporary file left


def test_a_loaded_state_continues_like_the_original(finch, byte_tokenizer, tmp_path):
    """Process a long prompt once, save it, and continue from the file later."""
    prompt = "A long document processed once. " * 8
    g = start(finch, byte_tokenizer, prompt, 12, temperature=0, stop_tokens=())
    g.run()
    path = tmp_path / "doc.state"  # any name: the file is safetensors whatever its suffix
    save_state(path, finch, g.context())
    loaded = load_state(path, finch)
    assert loaded.tokens == [byte_tokenizer.encode(prompt) + g.new_tokens[0]]
    kwargs = dict(temperature=0, stop_tokens=())
    continued = eaglefinch.generate(finch, byte_tokenizer, " And then", 12, context=loaded, **kwargs)
    # the same tokens from scratch (generated tokens need not re-encode from their text)
    everything = prefill(finch, loaded.tokens[0] + byte_tokenizer.encode(" And then"))
    expected = Generation(
        finch, byte_tokenizer, everything, 12, SamplingConfig(temperature=0), stop_tokens=()
    )
    assert continued == expected.run()[0]


def test_fresh_context_without_logits_round_trips(finch, tmp_path):
    path = tmp_path / "empty.safetensors"
    save_state(path, finch, Context.empty(finch))
    back = load_state(path, finch)
    assert back.logits is None and back.tokens == [[]]


def test_state_of_another_model_is_refused(finch, eagle, build_model, configs, tmp_path):
    path = tmp_path / "finch.safetensors"
    save_state(path, finch, prefill(finch, [1, 2]))
    with pytest.raises(StateError, match="Finch L2-D128.*this model is Eagle"):
        load_state(path, eagle)
    same_shape = build_model(configs["finch"], seed=99)
    with pytest.raises(StateError, match="other weights"):
        load_state(path, same_shape)


def test_state_moves_between_dtypes_of_one_checkpoint(finch, build_model, configs, tmp_path):
    path = tmp_path / "fp32.safetensors"
    save_state(path, finch, prefill(finch, [1, 2, 3]))
    bf16 = build_model(configs["finch"], dtype=torch.bfloat16)
    back = load_state(path, bf16)
    assert back.state.att_shift.dtype == torch.bfloat16 and back.state.wkv.dtype == torch.float32
    # a slightly changed copy (a fine-tune) is another model, even in another dtype
    tuned = build_model(configs["finch"], dtype=torch.bfloat16)
    with torch.no_grad():
        tuned.head.weight.mul_(1.1)
    with pytest.raises(StateError, match="other weights"):
        load_state(path, tuned)


def test_bad_files_are_one_line_errors(finch, tmp_path):
    with pytest.raises(StateError, match="no such state file"):
        load_state(tmp_path / "missing.safetensors", finch)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(StateError, match="not a readable state file"):
        load_state(garbage, finch)
    checkpoint = tmp_path / "model.safetensors"
    eaglefinch.save(finch, checkpoint)
    with pytest.raises(StateError, match="not an eaglefinch state file"):
        load_state(checkpoint, finch)


def test_fingerprint_positions_are_exact_for_large_tensors():
    from eaglefinch.generation.states import SAMPLES_PER_TENSOR, sample_index

    for numel in (1, 2, 1000, 2**24 + 1, 65536 * 768, 65536 * 4096):
        index = sample_index(numel)
        assert len(index) == SAMPLES_PER_TENSOR and index[0] == 0 and index[-1] == numel - 1
        assert bool((index[1:] >= index[:-1]).all()) and int(index.max()) < numel


def test_a_state_of_an_older_format_asks_to_be_saved_again(finch, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "state.safetensors"
    save_state(path, finch, prefill(finch, [1, 2, 3]))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = {**f.metadata(), "format_version": "1"}
    save_file(load_file(path), path, metadata=metadata)
    with pytest.raises(StateError, match="state format '1'.*save the state again"):
        load_state(path, finch)
