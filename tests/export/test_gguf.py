"""GGUF export: the file's layout against the gguf package's RWKV-6 tensor list, the embedded World
vocabulary, the tensor types, bad input; and (marker ``llamacpp``) llama.cpp itself running the
exported file: its logits against ours (f32 within 1e-3, q8_0 within twice the error of its own
weight rounding) and its tokenizer against ours."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import model_from_state_dict, save_state_dict
from eaglefinch.cli import main
from eaglefinch.errors import ConfigError
from eaglefinch.testing import random_state_dict

gguf = pytest.importorskip(
    "gguf", reason="GGUF export needs the gguf package: pip install 'eaglefinch[export]'"
)

from eaglefinch.export import export_gguf, gguf_tensors  # noqa: E402

CONFIG = RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=65536)  # the World vocabulary's rows
TOKENS = [33155, 40213, 45, 100, 5000, 261, 11, 7, 9000, 65529]


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict(CONFIG, seed=1)


@pytest.fixture(scope="module")
def exported(state_dict, tmp_path_factory):
    """One file per type, written once for the module."""
    root = tmp_path_factory.mktemp("gguf")
    return {
        kind: export_gguf(state_dict, root / f"finch-{kind}.gguf", kind) for kind in ("f32", "f16", "q8_0")
    }


def _reader(path: Path):
    return gguf.GGUFReader(path)


def _field(reader, key: str):
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_tensor_names_are_llama_cpps_rwkv6_set(exported):
    """Every tensor llama.cpp's rwkv6 architecture lists (per layer, with the five lerps fused as
    its converter writes them), and nothing else."""
    names = {t.name for t in _reader(exported["f32"]).tensors}
    arch = gguf.MODEL_ARCH.RWKV6
    separate_lerps = {gguf.MODEL_TENSOR[f"TIME_MIX_LERP_{c}"] for c in "WKVRG"}
    expected = set()
    for tensor in gguf.MODEL_TENSORS[arch]:
        if tensor in separate_lerps:
            continue
        template = gguf.TENSOR_NAMES[tensor]
        kinds = (
            (".weight", ".bias") if tensor.name.endswith(("NORM", "NORM_2", "TIME_MIX_LN")) else (".weight",)
        )
        for i in range(CONFIG.n_layer) if "{bid}" in template else [None]:
            base = template.format(bid=i) if i is not None else template
            expected |= {base + kind for kind in kinds}
    assert names == expected


def test_metadata_and_shapes(exported, state_dict):
    reader = _reader(exported["f32"])
    assert _field(reader, "general.architecture") == "rwkv6"
    assert _field(reader, "rwkv6.block_count") == 2 and _field(reader, "rwkv6.embedding_length") == 128
    assert _field(reader, "rwkv6.wkv.head_size") == 64 and _field(reader, "rwkv6.rescale_every_n_layers") == 0
    assert _field(reader, "rwkv6.feed_forward_length") == 448
    assert (
        _field(reader, "rwkv6.time_mix_extra_dim") == 32
        and _field(reader, "rwkv6.time_decay_extra_dim") == 64
    )
    tensors = {t.name: t for t in reader.tensors}
    # GGUF lists dimensions innermost first: numpy [out, in] is ne [in, out]
    assert list(tensors["blk.0.time_mix_w1.weight"].shape) == [128, 160]
    assert list(tensors["blk.0.time_mix_w2.weight"].shape) == [32, 128, 5]
    assert list(tensors["blk.0.time_mix_lerp_fused.weight"].shape) == [128, 1, 1, 5]
    assert list(tensors["blk.1.time_mix_first.weight"].shape) == [64, 2]
    assert list(tensors["blk.1.channel_mix_value.weight"].shape) == [448, 128]
    # values: exactly the checkpoint's, moved as the table in export/gguf.py says
    fused = np.asarray(tensors["blk.1.time_mix_lerp_fused.weight"].data).reshape(5, 128)
    for row, c in enumerate("wkvrg"):
        np.testing.assert_array_equal(
            fused[row], state_dict[f"blocks.1.att.time_maa_{c}"].reshape(-1).numpy()
        )
    w2 = np.asarray(tensors["blk.0.time_mix_w2.weight"].data).reshape(5, 128, 32)
    np.testing.assert_array_equal(w2, state_dict["blocks.0.att.time_maa_w2"].numpy().transpose(0, 2, 1))
    np.testing.assert_array_equal(
        np.asarray(tensors["output.weight"].data).reshape(65536, 128), state_dict["head.weight"].numpy()
    )


def test_vocabulary_is_the_world_vocabulary(exported):
    from eaglefinch.tokenizer import load_vocab

    reader = _reader(exported["f16"])
    assert _field(reader, "tokenizer.ggml.model") == "rwkv"
    assert _field(reader, "tokenizer.chat_template") == "rwkv-world"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 65536 and tokens[0] == "<s>" and tokens[65530] == "[PAD65530]"
    vocab = load_vocab()
    pieces = dict(zip(vocab.ids.tolist(), vocab.pieces, strict=True))
    for i in (1, 11, 40, 93, 261, 33155, 40213, 65529, *range(200, 300)):  # bytes, ' and \\, words
        assert codecs.escape_decode(tokens[i].encode())[0] == pieces[i], i  # how llama.cpp reads them
    assert _field(reader, "tokenizer.ggml.eot_token_id") == 261 and pieces[261] == b"\n\n"


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_matrices_take_the_type_and_the_rest_stays_float32(exported, kind):
    Q = gguf.GGMLQuantizationType
    want = {"f16": Q.F16, "q8_0": Q.Q8_0}[kind]
    types = {t.name: t.tensor_type for t in _reader(exported[kind]).tensors}
    for name in (
        "token_embd.weight",
        "output.weight",
        "blk.0.time_mix_key.weight",
        "blk.1.channel_mix_value.weight",
    ):
        assert types[name] == want, name
    kept = ("time_mix_first", "time_mix_w1", "time_mix_lerp_fused", "time_mix_decay", "attn_norm")
    for name in [f"blk.0.{k}.weight" for k in kept] + ["output_norm.bias"]:
        assert types[name] == Q.F32, name


def test_q8_0_blocks_round_within_half_a_step(exported, state_dict):
    """Each 32-value block: |w - dequantised| <= d / 2 with d = max|block| / 127, plus what the
    scale's rounding to fp16 (relative 2^-11) moves the largest level, 127 d 2^-11."""
    t = next(t for t in _reader(exported["q8_0"]).tensors if t.name == "blk.0.time_mix_key.weight")
    back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(128, 128)
    w = state_dict["blocks.0.att.key.weight"].numpy()
    step = np.abs(w.reshape(-1, 32)).max(1, keepdims=True) / 127
    assert (np.abs(back - w).reshape(-1, 32) <= step * (0.5 + 127 * 2**-11)).all()


def test_eagle_is_refused_with_what_is_supported():
    sd = random_state_dict(RWKVConfig("5.2", n_layer=1, n_embd=128, vocab_size=300))
    with pytest.raises(ConfigError, match=r"RWKV-5 \(Eagle\).*Finch \(RWKV-6\)"):
        gguf_tensors(sd)


def test_cli_bad_type_and_bad_file_get_one_line(tmp_path, capsys, state_dict):
    model = tmp_path / "m.pth"
    save_state_dict(random_state_dict(RWKVConfig("6.0", n_layer=1, n_embd=128, vocab_size=300)), model)
    assert main(["export", "--gguf", str(tmp_path / "x.gguf"), "--model", str(model), "--type", "q4_k"]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown GGUF type 'q4_k'" in err and "f32, f16, bf16, q8_0" in err and len(err.splitlines()) == 1
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    assert main(["export", "--gguf", str(tmp_path / "y.gguf"), "--model", str(tmp_path / "bad.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a readable PyTorch checkpoint" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))  # nothing half-written
    eagle = tmp_path / "eagle.pth"
    save_state_dict(random_state_dict(RWKVConfig("5.2", n_layer=1, n_embd=128, vocab_size=300)), eagle)
    assert main(["export", "--gguf", str(tmp_path / "z.gguf"), "--model", str(eagle)]) == 1
    assert "llama.cpp cannot run RWKV-5 (Eagle)" in capsys.readouterr().err


def test_cli_writes_a_small_vocabulary_model(tmp_path, capsys):
    """A vocabulary smaller than the World one: the token list stops at the embedding's rows."""
    model = tmp_path / "m.pth"
    save_state_dict(random_state_dict(RWKVConfig("6.0", n_layer=1, n_embd=128, vocab_size=300)), model)
    assert main(["export", "--gguf", str(tmp_path / "m.gguf"), "--model", str(model), "--type", "bf16"]) == 0
    assert "bf16" in capsys.readouterr().out
    reader = _reader(tmp_path / "m.gguf")
    assert len(_field(reader, "tokenizer.ggml.tokens")) == 300
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.time_mix_gate.weight"] == gguf.GGMLQuantizationType.BF16


# ------------------------------------------------------------------------------------ llama.cpp


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip(
        "llama_cpp", reason="llama.cpp parity needs llama-cpp-python: pip install 'eaglefinch[llamacpp]'"
    )


def _llama_logits(llama_cpp, path: Path, tokens: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def _our_logits(state_dict, tokens: list[int]) -> np.ndarray:
    model = model_from_state_dict(state_dict, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0][0].double().numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.llamacpp
def test_llama_cpp_f32_logits_match(llama_cpp, exported, state_dict):
    ours = _our_logits(state_dict, TOKENS)
    theirs = _llama_logits(llama_cpp, exported["f32"], TOKENS)
    assert _rel(theirs, ours) < 1e-3
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@pytest.mark.llamacpp
def test_llama_cpp_q8_0_within_the_quantisation_error(llama_cpp, exported, state_dict):
    """llama.cpp's q8_0 rounds the weights (what we emulate by dequantising them) and, in its q8_0
    dot products, the activations too: its error stays within twice the weights' rounding alone."""
    Q = gguf.GGMLQuantizationType
    reader = _reader(exported["q8_0"])
    rounded = dict(state_dict)
    official = {
        "token_embd.weight": "emb.weight",
        "output.weight": "head.weight",
        **{f"blk.{i}.time_mix_{n}.weight": f"blocks.{i}.att.{n}.weight"
           for i in range(2) for n in ("receptance", "key", "value", "gate", "output")},
        **{f"blk.{i}.channel_mix_{n}.weight": f"blocks.{i}.ffn.{n}.weight"
           for i in range(2) for n in ("key", "receptance", "value")},
    }  # fmt: skip
    for t in reader.tensors:
        if t.tensor_type == Q.Q8_0:
            key = official[t.name]
            rounded[key] = torch.from_numpy(
                gguf.quants.dequantize(t.data, Q.Q8_0).reshape(state_dict[key].shape)
            )
    assert len(rounded) == len(state_dict)
    exact = _our_logits(state_dict, TOKENS)
    weight_rounding = _rel(_our_logits(rounded, TOKENS), exact)
    theirs = _llama_logits(llama_cpp, exported["q8_0"], TOKENS)
    assert 0 < weight_rounding < 0.05
    assert _rel(theirs, exact) <= 2 * weight_rounding, (_rel(theirs, exact), weight_rounding)


@pytest.mark.llamacpp
def test_llama_cpp_tokenizer_matches_ours(llama_cpp, exported):
    from eaglefinch.tokenizer import WorldTokenizer

    tokenizer = WorldTokenizer()
    data = Path(__file__).resolve().parents[1] / "tokenizer" / "data" / "udhr_sample.jsonl"
    texts = [json.loads(line)["text"][:400] for line in data.read_text(encoding="utf-8").splitlines()[:40]]
    texts += [
        "User: hi\n\nAssistant: 'quoted' \"double\" \\ back\tslash \x00\x7f",
        "  def f(x):\n\treturn x  # ok",
    ]
    llm = llama_cpp.Llama(model_path=str(exported["f16"]), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in texts:
            ids = list(tokenizer.encode(text))
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text[:40]
            assert llm.detokenize(ids) == text.encode(), text[:40]
    finally:
        llm.close()
