"""One-token steps for decoding (T = 1), with the model's weights packed once.

Decoding reads every weight once per token, so its speed is the speed of matrix-vector products
plus the per-call overhead of many small operations. ``DecodeModel`` prepares, once:

* the matrices in the form the backend reads fastest (see ``Linear``);
* Eagle's constant decay ``exp(-exp(time_decay))``, and Finch's five token-shift mixes stacked
  so that the five interpolations are one operation;
* the state updated in place, so no per-token allocation of the (L, B, H, N, N) WKV matrices.

Three kinds of weights (``weights=``):

* ``"exact"`` (default): the model's own arithmetic in its dtype. With the ``"linear"`` layout a
  step is bitwise what ``model(tokens[:, None], state)`` computes; the packed layouts differ only
  in the order of summation (tests compare both with the model and the official package), in
  their products and in the float32 state's: ``r (u k^T v + S)`` is summed as ``r S + (r . u k) v``,
  which passes over the (B, H, N, N) state twice rather than five times (a bf16 Finch L12-D768
  step of 16 rows 29.4 -> 26.6 ms, of 64 rows 94.8 -> 78.0 ms: benchmarks/batched_step.py).
* ``"fp16"`` (CPU, opt-in): matrices stored in fp16 and multiplied in fp32 by FBGEMM's fp16-weight
  kernel: half the bytes of fp32. Lossless for bf16 checkpoints whose weights lie in fp16's normal
  range (``DecodeModel.lossless`` says whether they all do); for fp32 weights a rounding to 11
  significant bits (relative error <= 2^-11).
* ``"int8"`` (opt-in approximation): symmetric int8 rows with a per-row scale, torch's weight-only
  int8 kernel with bf16 activations: a quarter of the bytes of fp32, relative error ~1/254 per weight.
* ``"w8a8"`` (x86 CPU, opt-in, the fastest and the coarsest): the same int8 rows, multiplied by
  FBGEMM's dynamic int8 kernel, which also rounds each call's input to 7 bits over its range
  (7 rather than 8 so that AVX2's 16-bit pair sums cannot saturate). That range spans all the rows
  of a batch, so in batched decoding a row's logits depend slightly on the rows decoded with it;
  the other kinds keep rows independent.

The embedding LayerNorm ``ln0`` is applied to the B looked-up rows rather than folded into the
embedding as the official package does, which would copy a (V, C) matrix to save B * C work.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from eaglefinch.errors import ConfigError
from eaglefinch.model.rwkv import RWKV
from eaglefinch.model.state import RWKVState
from eaglefinch.model.time_mix import LN_X_EPS
from eaglefinch.ops.kernel_choice import triton_runs

Weights = Literal["exact", "fp16", "int8", "w8a8"]
WEIGHTS: tuple[str, ...] = ("exact", "fp16", "int8", "w8a8")
LAYOUTS: tuple[str, ...] = ("linear", "transposed", "onednn")
STATE_MATHS: tuple[str, ...] = ("model", "regrouped")
LN_EPS = 1e-5


class Linear:
    """``y = x @ W^T`` for one (out, in) weight, in the form chosen at packing time.

    * ``"linear"``: ``F.linear`` on the model's own tensor (no copy; the model's layout).
    * ``"transposed"``: a contiguous (in, out) copy read by ``x @ W_t``; on CPU, MKL's fp32 row-vector
      product reads this layout faster than ``F.linear`` reads (out, in) (benchmarks/decode_speed.py).
    * ``"onednn"``: fp32 weights, or bf16 weights on CPUs with AVX-512, reordered once into
      oneDNN's blocked layout. In bf16, the same product as ``F.linear``, bitwise, without its
      per-call reorder; in fp32, a different order of summation. On CPU this is the fastest exact
      layout at every batch size, and by far for batches: MKL's fp32 product of a few rows
      repacks the whole matrix on every call (benchmarks/decode_speed.py, batched).
      Where the CPU lacks bf16 instructions (AVX512-BF16, AMX), oneDNN emulates bf16 products, and
      from ``upcast_rows(...)`` rows on a product of the upcast fp32 weights is several times
      faster (benchmarks/bf16_emulation.py): these products then run in fp32 on a per-call fp32
      copy of the model's bf16 matrix, rounded to bf16 as F.linear rounds (another order of
      summation, the same rounding of the result; so there a row's last bits depend on how many
      rows share the call, never on their values). With ``fp32_copy``, a second, fp32 oneDNN copy
      of the matrix is kept for products of 2 rows or more, which then skip the upcast: about
      3x faster than the emulated product at 16 rows, twice the bf16 matrix's memory.
    * ``"fp16"``: FBGEMM's packed fp16 weights, fp32 activations (``quantized.linear_dynamic_fp16``).
    * ``"int8"``: symmetric int8 rows with a per-row scale, through torch's weight-only int8 kernel
      (``aten._weight_int8pack_mm``), bf16 activations.
    * ``"w8a8"``: the same int8 rows through FBGEMM's dynamic int8 product
      (``quantized.linear_dynamic``): inputs rounded to 7 bits per call, int32 accumulation.
    """

    def __init__(self, weight: torch.Tensor, kind: str, fp32_copy: bool = False):
        self.kind = kind
        self.out_features, self.in_features = weight.shape
        self.lossless = kind in ("linear", "transposed", "onednn")
        weight = weight.detach()
        if kind == "linear":
            self.weight = weight
        elif kind == "transposed":
            self.weight = weight.t().contiguous()  # (in, out)
        elif kind == "onednn":
            # reordered once into oneDNN's blocked layout; F.linear would reorder on every call
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            # emulated bf16: keep the (model's own, uncopied) bf16 matrix for fp32 products of many rows
            emulated = weight.dtype == torch.bfloat16 and not native_bf16_available()
            self.plain = weight if emulated else None
            self.upcast_rows = upcast_rows(weight.numel()) if emulated else None
            self.wide = (
                torch.ops.mkldnn._reorder_linear_weight(weight.float(), None)
                if emulated and fp32_copy
                else None
            )
        elif kind == "fp16":
            self.lossless = bool(torch.equal(weight.half().to(weight.dtype), weight))
            self.weight = torch.ops.quantized.linear_prepack_fp16(weight.float(), None)
        elif kind in ("int8", "w8a8"):
            w = weight.float()
            scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # (out,)
            rows = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
            self.scale = scale.to(torch.bfloat16)
            # w8a8 keeps only FBGEMM's packed copy of the rows, not a second one
            self.weight = _fbgemm_int8(rows, scale) if kind == "w8a8" else rows
        else:
            raise ConfigError(f"unknown matrix layout {kind!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in) -> (B, out) in x's dtype."""
        if self.kind == "linear":
            return F.linear(x, self.weight)
        if self.kind == "transposed":
            return x @ self.weight
        if self.kind == "onednn":
            if self.wide is not None and x.numel() >= 2 * self.in_features:
                return torch.ops.mkldnn._linear_pointwise(x.float(), self.wide, None, "none", [], "").to(
                    x.dtype
                )
            if self.plain is not None and x.numel() >= self.upcast_rows * self.in_features:
                return F.linear(x.float(), self.plain.float()).to(x.dtype)
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        if self.kind == "fp16":
            return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.weight).to(x.dtype)
        if self.kind == "w8a8":
            # reduce_range=True: 7-bit inputs, so that AVX2's u8 x s8 pair sums cannot saturate int16
            return torch.ops.quantized.linear_dynamic(x.float(), self.weight, True).to(x.dtype)
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scale).to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of weights read per matrix-vector product."""
        n = self.out_features * self.in_features
        if self.kind == "fp16":
            return 2 * n
        if self.kind in ("int8", "w8a8"):
            return n + self.scale.numel() * self.scale.element_size()
        return n * self.weight.element_size()


def native_bf16_available() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them oneDNN emulates bf16."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def upcast_rows(n_weights: int) -> int:
    """From how many rows an fp32 product of an upcast bf16 matrix beats oneDNN's emulated bf16 one.

    The upcast costs one pass over the matrix per call; the emulated product costs about three
    times the fp32 one per row (benchmarks/bf16_emulation.py). Up to a few million weights the fp32
    copy stays in cache and 16 rows repay it; beyond (the vocabulary head) it takes about 64.
    """
    return 16 if n_weights <= 1 << 22 else 64


def onednn_layout_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the "onednn" layout can hold this dtype's matrices on this device."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and onednn_bf16_available())


def onednn_bf16_available() -> bool:
    """Whether oneDNN has bf16 products here (AVX-512; native with AVX512-BF16 or AMX, else emulated)."""
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); very large where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 1 << 62


def default_layout(dtype: torch.dtype, device: torch.device, matrix_bytes: int = 0) -> str:
    """The exact layout the decode benchmark found fastest for this dtype and device.

    "transposed" and "onednn" hold a second copy of the matrices (the model keeps its own); where
    that copy (``matrix_bytes``) would take more than half the available memory, "linear" reads
    the model's tensors in place instead.
    """
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16):
        if 2 * matrix_bytes > available_memory_bytes():
            return "linear"
        if onednn_layout_available(dtype, device):
            return "onednn"
        if dtype == torch.float32:
            return "transposed"
    return "linear"


def fp16_kernel_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def _fbgemm_int8(q: torch.Tensor, scale: torch.Tensor):
    """Pack int8 rows (out, in) with per-row float32 scales for FBGEMM's dynamic int8 product."""
    with warnings.catch_warnings():  # torch marks its quantized-tensor constructors deprecated
        warnings.simplefilter("ignore", UserWarning)
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        weight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(weight, None)


def _layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, LN_EPS)


class _Layer:
    """One block's tensors, packed for a single-token step."""

    def __init__(self, block, version: str, matrix, exact_matrix, regrouped_state_math: bool = False):
        att, ffn = block.att, block.ffn
        self.regrouped_state_math = regrouped_state_math
        self.ln1, self.ln2 = block.ln1, block.ln2
        self.n_head, self.head_size = att.n_head, att.head_size
        self.u = att.time_faaaa.detach().float().view(1, att.n_head, att.head_size, 1)  # bonus, (1, H, N, 1)
        self.r, self.k, self.v, self.g, self.o = (
            matrix(m.weight) for m in (att.receptance, att.key, att.value, att.gate, att.output)
        )
        self.lnx_w, self.lnx_b = att.ln_x.weight.detach().float(), att.ln_x.bias.detach().float()
        self.ffn_k, self.ffn_r, self.ffn_v = (
            matrix(ffn.key.weight),
            matrix(ffn.receptance.weight),
            matrix(ffn.value.weight),
        )
        self.version = version
        # decided once here rather than per token: the WKV state is float32 on the model's device
        self.fused_step = triton_runs(att.time_faaaa.device, torch.float32, self.head_size)
        if version == "5.2":
            # Order r, k, v, g; Eagle weights the current token: x_t = sx + (xx - sx) * mix_t.
            self.mix = torch.stack([att.time_mix_r, att.time_mix_k, att.time_mix_v, att.time_mix_g]).detach()
            self.mix = self.mix.view(4, 1, -1)  # (4, 1, C)
            # w = exp(-exp(time_decay)) per key channel, applied to the state's rows: (1, H, N, 1).
            self.w = torch.exp(-torch.exp(att.time_decay.detach().float())).view(
                1, self.n_head, self.head_size, 1
            )
            self.ffn_mix_k, self.ffn_mix_r = (
                ffn.time_mix_k.detach().view(1, -1),
                ffn.time_mix_r.detach().view(1, -1),
            )
        else:
            # Order w, k, v, r, g as the LoRA's five outputs; Finch weights the previous token.
            self.maa_x = att.time_maa_x.detach().view(1, -1)
            self.maa = (
                torch.stack([att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g])
                .detach()
                .view(5, 1, -1)
            )  # (5, 1, C)
            # the LoRA matrices are small: always exact, in the exact layout (x @ W is F.linear(x, W^T))
            self.maa_w1 = exact_matrix(att.time_maa_w1.detach().t())  # (5R, C)
            self.maa_w2 = att.time_maa_w2.detach()  # (5, R, C)
            self.decay = att.time_decay.detach().float().view(1, -1)  # (1, A)
            self.decay_w1 = exact_matrix(att.time_decay_w1.detach().t())  # (D, C)
            self.decay_w2 = exact_matrix(att.time_decay_w2.detach().t())  # (A, D)
            self.ffn_maa_k, self.ffn_maa_r = (
                ffn.time_maa_k.detach().view(1, -1),
                ffn.time_maa_r.detach().view(1, -1),
            )

    def matrices(self) -> list[Linear]:
        return [self.r, self.k, self.v, self.g, self.o, self.ffn_k, self.ffn_r, self.ffn_v]

    def time_mix(self, x: torch.Tensor, shift: torch.Tensor, wkv: torch.Tensor) -> torch.Tensor:
        """x: (B, C); shift (B, C) and wkv (B, H, N, N) float32 are updated in place. Returns x + out."""
        B = x.shape[0]
        H, N = self.n_head, self.head_size
        xx = _layer_norm(x, self.ln1)
        sx = shift.to(xx.dtype)
        if self.version == "5.2":
            xr, xk, xv, xg = (sx + (xx - sx) * self.mix).unbind(0)
            w = self.w
        else:
            dx = sx - xx
            xxx = xx + dx * self.maa_x
            lora = torch.tanh(self.maa_w1(xxx)).view(B, 5, -1).transpose(0, 1)  # (5, B, R)
            xw, xk, xv, xr, xg = (xx + dx * (self.maa + torch.bmm(lora, self.maa_w2))).unbind(0)
            d = self.decay + self.decay_w2(torch.tanh(self.decay_w1(xw))).float()  # (B, A)
            w = torch.exp(-torch.exp(d)).view(B, H, N, 1)
        r = self.r(xr).float().view(B, H, 1, N)
        k = self.k(xk).float().view(B, H, N, 1)
        v = self.v(xv).float().view(B, H, 1, N)
        g = F.silu(self.g(xg))
        if self.fused_step and wkv.is_contiguous():  # one fused kernel, the state updated in place
            from eaglefinch.ops.triton import wkv_step_triton

            rkv = (x.reshape(B, H, N) for x in (r, k, v))
            y = wkv_step_triton(*rkv, w.reshape(-1, H, N), self.u.view(H, N), wkv, w_is_log=False)
            y = y.view(B, H, 1, N)
        elif self.regrouped_state_math:
            # r (u k^T v + S) regrouped as r S + (r . u k) v: no (B, H, N, N) temporaries and half
            # the passes over the state, which grows with the batch
            y = torch.addcmul(r @ wkv, r @ (self.u * k), v)  # (B, H, 1, N)
            wkv.mul_(w).addcmul_(k, v)  # S = k^T v + diag(w) S, in place
        else:
            kv = k * v  # (B, H, N, N) = k^T v
            y = r @ (self.u * kv + wkv)  # (B, H, 1, N)
            wkv.mul_(w).add_(kv)  # S = k^T v + diag(w) S, in place
        shift.copy_(xx)
        # y passes through the working dtype before the float32 GroupNorm, as in the model
        y = F.group_norm(y.view(B, H * N).to(x.dtype).float(), H, self.lnx_w, self.lnx_b, LN_X_EPS)
        return x + self.o(y.to(x.dtype) * g)

    def channel_mix(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """x: (B, C); shift (B, C) is updated in place. Returns x + out."""
        xx = _layer_norm(x, self.ln2)
        sx = shift.to(xx.dtype)
        if self.version == "5.2":
            xk = sx + (xx - sx) * self.ffn_mix_k
            xr = sx + (xx - sx) * self.ffn_mix_r
        else:
            xk = xx + (sx - xx) * self.ffn_maa_k
            xr = xx + (sx - xx) * self.ffn_maa_r
        k = torch.relu(self.ffn_k(xk)).square()
        shift.copy_(xx)
        return x + torch.sigmoid(self.ffn_r(xr)) * self.ffn_v(k)


class DecodeModel:
    """A model's weights packed for single-token steps; build once, call ``step`` per token.

    Args:
        model: an ``RWKV`` model (any dtype and device). Its tensors are shared, not copied, where
            the layout allows; later in-place changes to the model's weights are seen, replaced
            tensors are not (build a new DecodeModel after ``model.to(...)``).
        weights: ``"exact"`` (the model's arithmetic), ``"fp16"`` (fp16 matrices, fp32 products; CPU,
            opt-in, lossless for most bf16 checkpoints), ``"int8"`` (weight-only int8 matrices and
            head with per-row scales; CPU, opt-in, an approximation) or ``"w8a8"`` (the same int8
            weights and 7-bit inputs; x86 CPU, opt-in, the fastest). See the module docstring.
        layout: for ``"exact"``, force ``"linear"``, ``"transposed"`` or ``"onednn"`` matrices
            (default: the fastest measured for the dtype and device, unless its copy of the
            matrices would take more than half the available memory: then ``"linear"``).
        fp32_copies: for a bf16 model in the "onednn" layout on a CPU that emulates bf16 (no
            AVX512-BF16 or AMX), also keep an fp32 copy of every matrix for products of 2 rows or
            more (batches, prompts): about 3x faster at 16 rows, for twice the bf16 matrices' memory
            (benchmarks/bf16_emulation.py). ``None``: where that copy takes under half the available
            memory, as the server does. Elsewhere it changes nothing.
        state_math: ``"model"`` (the model's operations on the WKV state) or ``"regrouped"`` (the
            same sums regrouped: fewer passes over the state, another rounding of its float32
            arithmetic). Default: "model" for the "linear" layout (a step is then bitwise the
            model's), "regrouped" for the others, whose products already sum in another order or,
            for bf16 oneDNN matrices, are F.linear's bitwise (so a "linear" decoder with
            ``state_math="regrouped"`` is bitwise the oneDNN one).
    """

    def __init__(
        self,
        model: RWKV,
        weights: Weights = "exact",
        layout: str | None = None,
        fp32_copies: bool | None = False,
        state_math: str | None = None,
    ):
        if weights not in WEIGHTS:
            raise ConfigError(f"unknown decode weights {weights!r}: use one of {', '.join(WEIGHTS)}")
        if weights != "exact" and model.device.type != "cpu":
            raise ConfigError(
                f"weights={weights!r} uses a CPU kernel; on {model.device.type} load the model in fp16 "
                "or bf16 and decode with weights='exact'"
            )
        if weights in ("fp16", "w8a8") and not fp16_kernel_available():
            raise ConfigError(
                f"weights={weights!r} needs torch's FBGEMM backend (x86 CPUs), which this build lacks"
            )
        if state_math is not None and state_math not in STATE_MATHS:
            raise ConfigError(f"unknown state_math {state_math!r}: use one of {', '.join(STATE_MATHS)}")
        if layout is not None and layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
        if layout == "onednn" and not onednn_layout_available(model.dtype, model.device):
            raise ConfigError(
                "layout 'onednn' needs a CPU model in float32, or in bf16 on a CPU with bf16 instructions"
            )
        self.config = model.config
        self.weights = weights
        self.dtype, self.device = model.dtype, model.device
        matrix_bytes = sum(
            p.numel() * p.element_size()
            for name, p in model.named_parameters()
            if p.dim() == 2 and name != "emb.weight"
        )
        exact = layout or default_layout(self.dtype, self.device, matrix_bytes)
        kind = weights if weights != "exact" else exact
        emulated_bf16 = kind == "onednn" and self.dtype == torch.bfloat16 and not native_bf16_available()
        if emulated_bf16 and fp32_copies is None:  # the copies (2x the bf16 bytes) under half the memory
            fp32_copies = 4 * matrix_bytes < available_memory_bytes()
        self.fp32_copies = wide = emulated_bf16 and bool(fp32_copies)
        with torch.no_grad():
            self.emb = model.emb.weight.detach()
            self.ln0 = model.blocks[0].ln0
            # the "linear" layout is the model's own arithmetic; the packed layouts are for speed
            regrouped = (state_math or ("model" if kind == "linear" else "regrouped")) == "regrouped"
            # Finch's LoRA matrices (C x 160, C x 64, 64 x C) are so small that oneDNN's per-call
            # setup costs more than the product itself: in fp32, MKL's transposed product has less
            small = "transposed" if exact == "onednn" and self.dtype == torch.float32 else exact
            self.layers = [
                _Layer(
                    block,
                    self.config.version,
                    lambda w: Linear(w, kind, fp32_copy=wide),
                    lambda w: Linear(w, small, fp32_copy=wide),
                    regrouped_state_math=regrouped,
                )
                for block in model.blocks
            ]
            self.ln_out = model.ln_out
            self.head = Linear(model.head.weight, kind, fp32_copy=wide)
        self._tuned_state = model.zero_state(1) if self.config.time_state else None
        # The model's own nn.Linear layers with this decoder's oneDNN matrices, for prefill (see
        # ``products_for``); only where those matrices hold the model's weights (exact weights).
        self._products: list[tuple[torch.nn.Linear, Linear]] = []
        if kind == "onednn":
            for block, layer in zip(model.blocks, self.layers, strict=True):
                att, ffn = block.att, block.ffn
                modules = (att.receptance, att.key, att.value, att.gate, att.output, ffn.key)
                modules += (ffn.receptance, ffn.value)
                self._products += zip(modules, layer.matrices(), strict=True)
            self._products.append((model.head, self.head))
        self._packed_pointers = [module.weight.data_ptr() for module, _ in self._products]

    def zero_state(self, batch_size: int = 1) -> RWKVState:
        """The initial state (the checkpoint's tuned ``time_state`` where it has one)."""
        state = RWKVState.zeros(self.config, batch_size, device=self.device, dtype=self.dtype)
        if self._tuned_state is not None:
            state.wkv[:] = self._tuned_state.wkv
        return state

    @contextlib.contextmanager
    def products_for(self, model: RWKV) -> Iterator[None]:
        """Within this context, ``model``'s projections and head multiply by this decoder's matrices.

        A prompt of tens to hundreds of tokens is a product of a few rows per matrix, where oneDNN's
        pre-packed matrices save the repacking that ``F.linear`` does on every call; in fp32 the
        sums run in another order, in bf16 the product is bitwise the same (on CPUs without bf16
        instructions, fp32 sums of the upcast weights, rounded alike: see ``Linear``). Nothing
        changes unless this decoder holds the model's matrices in that layout (exact weights,
        layout "onednn") and the model still has the weights it was packed from. Inference only:
        the packed products have no gradient.
        """
        current = [module.weight.data_ptr() for module, _ in self._products]
        packed_here = bool(self._products) and model.head is self._products[-1][0]
        if not packed_here or current != self._packed_pointers or torch.is_grad_enabled():
            yield
            return
        for module, matrix in self._products:
            module.forward = matrix  # an instance attribute: nn.Module.__call__ finds it first
        try:
            yield
        finally:
            for module, _ in self._products:
                del module.forward

    @property
    def lossless(self) -> bool:
        """Whether every matrix holds the model's weights exactly (always true for "exact")."""
        return self.head.lossless and all(m.lossless for layer in self.layers for m in layer.matrices())

    def weight_bytes(self) -> int:
        """Bytes of weights one step reads: every matrix, the head and one embedding row (per row)."""
        total = self.head.nbytes() + self.emb.shape[1] * self.emb.element_size()
        for layer in self.layers:
            total += sum(m.nbytes() for m in layer.matrices())
        return total

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: RWKVState) -> torch.Tensor:
        """Feed one token per row; ``state`` is updated in place.

        Args:
            tokens: LongTensor (B,) on the model's device.
            state: the state after the previous tokens (B rows, this model's dtype and device);
                changed in place to the state after ``tokens``.

        Returns:
            logits (B, V) float32 for the next token.
        """
        if tokens.dim() != 1:
            raise ConfigError(f"step() takes one token per row, shape (B,), got {tuple(tokens.shape)}")
        state.check(self.config, tokens.shape[0])
        x = _layer_norm(self.emb[tokens], self.ln0)  # (B, C)
        for i, layer in enumerate(self.layers):
            x = layer.time_mix(x, state.att_shift[i], state.wkv[i])
            x = layer.channel_mix(x, state.ffn_shift[i])
        return self.head(_layer_norm(x, self.ln_out)).float()
