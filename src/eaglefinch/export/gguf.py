"""GGUF files for llama.cpp from Finch (RWKV-6) checkpoints, through the ``gguf`` package.

llama.cpp runs RWKV-6 as its ``rwkv6`` architecture; it has no RWKV-5 (Eagle) or RWKV-4 graph, so
only Finch checkpoints export. The tensors are the official ones renamed to llama.cpp's names, with
the layout its graph reads (numpy shapes below; GGUF stores them with the dimensions reversed):

================================  ===============================  ==============================
official (``blocks.{i}.``)        GGUF (``blk.{i}.``)              change
================================  ===============================  ==============================
``emb.weight``                    ``token_embd.weight``
``blocks.0.ln0``                  ``token_embd_norm``
``ln1`` / ``ln2``                 ``attn_norm`` / ``attn_norm_2``
``att.time_maa_x``                ``time_mix_lerp_x``              squeezed to [C]
``att.time_maa_{w,k,v,r,g}``      ``time_mix_lerp_fused``          stacked in that order, [5,1,1,C]
``att.time_maa_w1`` [C, 5D]       ``time_mix_w1``                  transposed to [5D, C]
``att.time_maa_w2`` [5, D, C]     ``time_mix_w2``                  to [5, C, D]
``att.time_decay``                ``time_mix_decay``               squeezed to [C]
``att.time_decay_w1`` / ``_w2``   ``time_mix_decay_w1`` / ``_w2``  transposed
``att.time_faaaa`` [H, N]         ``time_mix_first``
``att.{receptance,key,value,gate,output}``  ``time_mix_{receptance,key,value,gate,output}``
``att.ln_x``                      ``time_mix_ln``                  (the per-head GroupNorm)
``ffn.time_maa_{k,r}``            ``channel_mix_lerp_{k,r}``       squeezed to [C]
``ffn.{key,receptance,value}``    ``channel_mix_{key,receptance,value}``
``ln_out`` / ``head``             ``output_norm`` / ``output``
================================  ===============================  ==============================

No layer rescaling is written (``rescale_every_n_layers`` = 0): the weights are the checkpoint's.
The World vocabulary goes in as llama.cpp's ``rwkv`` tokenizer (token 0 ``<s>``, then the
vocabulary's pieces as escaped byte strings, padded to the embedding's rows), with the World chat
template and ``\\n\\n`` (id 261) as end of turn.

``--type`` sets the matrices' type (f32, f16, bf16 or q8_0); vectors, the token-shift and decay
LoRA matrices, the bonus and the fused lerp stay float32, as llama.cpp's own converter keeps them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from eaglefinch.config import detect_version, infer_config
from eaglefinch.errors import ConfigError

TYPES = ("f32", "f16", "bf16", "q8_0")
# tensors llama.cpp's converter keeps in float32 whatever the file type (small, and precision-critical)
_KEEP_F32 = ("time_mix_first", "time_mix_lerp_fused", "time_mix_w1", "time_mix_w2", "time_mix_decay_w1",
             "time_mix_decay_w2")  # fmt: skip
_LERP_ORDER = ("w", "k", "v", "r", "g")
WORLD_CHAT_TEMPLATE = "rwkv-world"
END_OF_TURN = 261  # "\n\n" in the World vocabulary


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the gguf package: pip install 'eaglefinch[export]'") from None
    return gguf


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def gguf_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under llama.cpp's RWKV-6 names and layout, float32 (see the table)."""
    version = detect_version(state_dict.keys())
    if version != "6.0":
        if version == "unknown":
            raise ConfigError("not an RWKV checkpoint: GGUF export supports Finch (RWKV-6) checkpoints")
        name = "RWKV-5 (Eagle)" if version.startswith("5") else f"RWKV-{version}"
        raise ConfigError(
            f"llama.cpp cannot run {name} checkpoints (it has no graph for them); "
            "GGUF export supports Finch (RWKV-6) checkpoints only"
        )
    config = infer_config(state_dict)
    if any(k.endswith("att.time_state") for k in state_dict):
        raise ConfigError(
            "this checkpoint carries a tuned initial state (time_state), which llama.cpp's RWKV-6 "
            "cannot hold; export the base model and keep the state as a state file"
        )
    sd = state_dict
    out = {
        "token_embd.weight": _numpy(sd["emb.weight"]),
        "token_embd_norm.weight": _numpy(sd["blocks.0.ln0.weight"]),
        "token_embd_norm.bias": _numpy(sd["blocks.0.ln0.bias"]),
        "output_norm.weight": _numpy(sd["ln_out.weight"]),
        "output_norm.bias": _numpy(sd["ln_out.bias"]),
        "output.weight": _numpy(sd["head.weight"]),
    }
    for i in range(config.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        t = {key[len(p) :]: value for key, value in sd.items() if key.startswith(p)}
        for src, dst in (("ln1", "attn_norm"), ("ln2", "attn_norm_2"), ("att.ln_x", "time_mix_ln")):
            out[f"{b}{dst}.weight"] = _numpy(t[f"{src}.weight"])
            out[f"{b}{dst}.bias"] = _numpy(t[f"{src}.bias"])
        out[f"{b}time_mix_lerp_x.weight"] = _numpy(t["att.time_maa_x"]).reshape(-1)
        out[f"{b}time_mix_lerp_fused.weight"] = np.stack(
            [_numpy(t[f"att.time_maa_{c}"]).reshape(1, 1, -1) for c in _LERP_ORDER]
        )
        out[f"{b}time_mix_w1.weight"] = _numpy(t["att.time_maa_w1"]).T.copy()
        out[f"{b}time_mix_w2.weight"] = _numpy(t["att.time_maa_w2"]).transpose(0, 2, 1).copy()
        out[f"{b}time_mix_decay.weight"] = _numpy(t["att.time_decay"]).reshape(-1)
        out[f"{b}time_mix_decay_w1.weight"] = _numpy(t["att.time_decay_w1"]).T.copy()
        out[f"{b}time_mix_decay_w2.weight"] = _numpy(t["att.time_decay_w2"]).T.copy()
        out[f"{b}time_mix_first.weight"] = _numpy(t["att.time_faaaa"])
        for name in ("receptance", "key", "value", "gate", "output"):
            out[f"{b}time_mix_{name}.weight"] = _numpy(t[f"att.{name}.weight"])
        out[f"{b}channel_mix_lerp_k.weight"] = _numpy(t["ffn.time_maa_k"]).reshape(-1)
        out[f"{b}channel_mix_lerp_r.weight"] = _numpy(t["ffn.time_maa_r"]).reshape(-1)
        for name in ("key", "receptance", "value"):
            out[f"{b}channel_mix_{name}.weight"] = _numpy(t[f"ffn.{name}.weight"])
    return out


def token_list(vocab_size: int, vocab=None) -> tuple[list[bytes], list[int]]:
    """llama.cpp's ``rwkv`` token list: ``<s>`` at 0, each World piece as the text of its Python
    bytes literal (what llama.cpp unescapes), ``[PADn]`` for embedding rows past the vocabulary."""
    from eaglefinch.tokenizer import load_vocab

    gguf = _gguf()
    vocab = vocab or load_vocab()
    pieces = dict(zip(vocab.ids.tolist(), vocab.pieces, strict=True))
    tokens, types = [b"<s>"], [gguf.TokenType.CONTROL]
    for i in range(1, vocab_size):
        piece = pieces.get(i)
        if piece is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(repr(piece)[2:-1].encode())
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _encode(gguf, name: str, array: np.ndarray, kind: str):
    """(data, raw_dtype) of one tensor in the file's type; float32 where the type cannot hold it."""
    Q = gguf.GGMLQuantizationType
    if array.ndim <= 1 or name.endswith("norm.weight") or any(k in name for k in _KEEP_F32) or kind == "f32":
        return array, None
    if kind == "f16":
        return array.astype(np.float16), None
    qtype = Q.BF16 if kind == "bf16" else Q.Q8_0
    if qtype == Q.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return array.astype(np.float16), None  # rows not a whole number of 32-value blocks
    return gguf.quants.quantize(array, qtype), qtype


def export_gguf(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    kind: str = "f16",
    name: str = "eaglefinch Finch",
    vocab=None,
) -> Path:
    """Write ``state_dict`` (an official Finch checkpoint's tensors) as a GGUF file llama.cpp runs.

    ``kind``: the matrices' type, one of ``TYPES``. The file is written atomically.
    """
    if kind not in TYPES:
        raise ConfigError(f"unknown GGUF type {kind!r}: use one of {', '.join(TYPES)}")
    gguf = _gguf()
    tensors = gguf_tensors(state_dict)
    config = infer_config(state_dict)
    C = config.n_embd
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[kind]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.RWKV6])
        writer.add_name(name)
        writer.add_context_length(1048576)  # a recurrent model: no context limit
        writer.add_embedding_length(C)
        writer.add_block_count(config.n_layer)
        writer.add_layer_norm_eps(1e-5)
        writer.add_rescale_every_n_layers(0)
        writer.add_wkv_head_size(config.head_size)
        writer.add_time_mix_extra_dim(tensors["blk.0.time_mix_w2.weight"].shape[-1])
        writer.add_time_decay_extra_dim(tensors["blk.0.time_mix_decay_w1.weight"].shape[0])
        writer.add_feed_forward_length(tensors["blk.0.channel_mix_key.weight"].shape[0])
        writer.add_head_count(0)  # read by llama.cpp, unused for RWKV
        writer.add_file_type(file_type)
        tokens, types = token_list(tensors["token_embd.weight"].shape[0], vocab)
        writer.add_tokenizer_model("rwkv")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_chat_template(WORLD_CHAT_TEMPLATE)
        writer.add_eot_token_id(END_OF_TURN)
        for tensor_name, array in tensors.items():
            data, raw_dtype = _encode(gguf, tensor_name, array, kind)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def export_checkpoint(model_path: str | os.PathLike, out: str | os.PathLike, kind: str = "f16") -> Path:
    """``eaglefinch export --gguf``: read an official ``.pth``/``.safetensors`` and write the GGUF."""
    from eaglefinch.checkpoint import check_state_dict, read_state_dict

    if kind not in TYPES:
        raise ConfigError(f"unknown GGUF type {kind!r}: use one of {', '.join(TYPES)}")
    state_dict = read_state_dict(model_path)
    if detect_version(state_dict.keys()) == "6.0":
        check_state_dict(state_dict, infer_config(state_dict))
    return export_gguf(state_dict, out, kind, name=Path(model_path).stem)
