"""The packed one-token decoder against the model's own T=1 forward and the official package."""

from __future__ import annotations

import pytest
import torch

from eaglefinch import RWKVConfig
from eaglefinch.errors import ConfigError
from eaglefinch.model.decode import DecodeModel, onednn_bf16_available

CASES = {
    "finch": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=300),
    "eagle": RWKVConfig("5.2", n_layer=2, n_embd=128, vocab_size=300),
    "finch-timestate": RWKVConfig("6.0", n_layer=2, n_embd=128, vocab_size=300, time_state=True),
    "eagle-L3-F320": RWKVConfig("5.2", n_layer=3, n_embd=192, dim_ffn=320, vocab_size=257),
}


def run_steps(step, state, tokens):
    """Feed tokens (B, T) one column at a time; return logits (B, T, V)."""
    return torch.stack([step(tokens[:, t], state) for t in range(tokens.shape[1])], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_linear_layout_is_the_models_arithmetic(case, dtype, build_model):
    """Same weights, same operations: bitwise equal to model(tokens[:, None], state), step after step."""
    model = build_model(CASES[case], dtype=dtype)
    decoder = DecodeModel(model, layout="linear")
    tokens = torch.randint(0, CASES[case].vocab_size, (3, 6), generator=torch.Generator().manual_seed(0))
    state = decoder.zero_state(3)
    ours = run_steps(decoder.step, state, tokens)
    with torch.no_grad():
        theirs, their_state = None, model.zero_state(3)
        outs = []
        for t in range(tokens.shape[1]):
            out, their_state = model(tokens[:, t : t + 1], their_state)
            outs.append(out[:, 0])
        theirs = torch.stack(outs, dim=1)
    assert torch.equal(ours, theirs)
    for name, tensor in state.tensors().items():
        assert torch.equal(tensor, their_state.tensors()[name]), name


@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_default_layout_matches_the_official_package(
    case, build_model, rwkv_package, tmp_path, relative_error
):
    """The default (fastest) exact decoder, token by token, against the package's cpu fp32 forward."""
    from eaglefinch.testing import random_state_dict

    config = CASES[case]
    path = tmp_path / "model.pth"
    torch.save(random_state_dict(config, seed=2), path)
    official = rwkv_package.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    from eaglefinch import load

    decoder = DecodeModel(load(path))
    state = decoder.zero_state(1)
    their_state = None
    for token in torch.randint(
        0, config.vocab_size, (10,), generator=torch.Generator().manual_seed(1)
    ).tolist():
        theirs, their_state = official.forward([token], their_state)
        ours = decoder.step(torch.tensor([token]), state)
        assert relative_error(ours[0], theirs) < 1e-5


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN bf16 needs AVX-512")
@pytest.mark.parametrize("case", ["finch", "eagle", "eagle-L3-F320"])
def test_onednn_layout_is_bitwise_the_linear_layout(case, build_model):
    """bf16 weights reordered once for oneDNN: the same products as F.linear, bitwise, batch 1 and 3
    (with the same state arithmetic, the packed layouts' regrouped one); and it is the default for
    bf16 models on such CPUs."""
    model = build_model(CASES[case], dtype=torch.bfloat16)
    assert DecodeModel(model).head.kind == "onednn"
    tokens = torch.randint(0, CASES[case].vocab_size, (3, 5), generator=torch.Generator().manual_seed(4))
    for rows in (tokens[:1], tokens):
        a = DecodeModel(model, layout="linear", state_math="regrouped")
        b = DecodeModel(model, layout="onednn")
        assert b.layers[0].regrouped_state_math
        sa, sb = a.zero_state(rows.shape[0]), b.zero_state(rows.shape[0])
        assert torch.equal(run_steps(a.step, sa, rows), run_steps(b.step, sb, rows))
        assert torch.equal(sa.wkv, sb.wkv)


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN bf16 needs AVX-512")
def test_emulated_bf16_products_of_many_rows_run_in_fp32(monkeypatch):
    """Without bf16 instructions, a bf16 matrix's products of many rows are fp32 products of its
    upcast weights, rounded to bf16; fewer rows keep oneDNN's product (bitwise F.linear)."""
    import eaglefinch.model.decode as decode

    monkeypatch.setattr(decode, "native_bf16_available", lambda: False)
    weight = torch.randn(96, 64).bfloat16()
    matrix = decode.Linear(weight, "onednn")
    assert matrix.plain.data_ptr() == weight.data_ptr()  # the model's own tensor, not a copy
    many = torch.randn(2, matrix.upcast_rows // 2, 64).bfloat16()  # rows counted over all leading dims
    few = many.view(-1, 64)[: matrix.upcast_rows - 1]
    exact = torch.nn.functional.linear(many.double(), weight.double())
    upcast = matrix(many)
    assert upcast.dtype == torch.bfloat16 and upcast.shape == (2, matrix.upcast_rows // 2, 96)
    assert torch.equal(upcast, torch.nn.functional.linear(many.float(), weight.float()).bfloat16())
    assert ((upcast.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()  # bf16's rounding
    assert torch.equal(matrix(few), torch.nn.functional.linear(few, weight))
    monkeypatch.setattr(decode, "native_bf16_available", lambda: True)
    assert decode.Linear(weight, "onednn").plain is None
    assert decode.upcast_rows(65536 * 768) > decode.upcast_rows(768 * 768)


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN bf16 needs AVX-512")
def test_fp32_copy_serves_products_of_two_rows_or_more(monkeypatch):
    """With an fp32 copy, emulated-bf16 products of 2+ rows are fp32 products rounded to bf16 (another
    order of summation than F.linear's, so checked against float64); 1 row keeps oneDNN's bf16 product."""
    import eaglefinch.model.decode as decode

    monkeypatch.setattr(decode, "native_bf16_available", lambda: False)
    weight = torch.randn(96, 64).bfloat16()
    matrix = decode.Linear(weight, "onednn", fp32_copy=True)
    assert matrix.wide is not None and decode.Linear(weight, "onednn").wide is None
    rows = torch.randn(2, 64).bfloat16()
    exact = torch.nn.functional.linear(rows.double(), weight.double())
    wide = matrix(rows)
    assert wide.dtype == torch.bfloat16 and wide.shape == (2, 96)
    assert ((wide.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-5).all()  # bf16's rounding
    assert torch.equal(matrix(rows[:1]), torch.nn.functional.linear(rows[:1], weight))
    monkeypatch.setattr(decode, "native_bf16_available", lambda: True)
    assert decode.Linear(weight, "onednn", fp32_copy=True).wide is None  # native bf16: no copy


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN bf16 needs AVX-512")
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_decoder_with_fp32_copies_steps_batches_as_closely(case, build_model, relative_error, monkeypatch):
    """A bf16 decoder with fp32 copies (as the server builds it on CPUs that emulate bf16): one row
    is bitwise the plain decoder's step; a batch is as close to the float64 model as that step."""
    import eaglefinch.model.decode as decode

    monkeypatch.setattr(decode, "native_bf16_available", lambda: False)
    model = build_model(CASES[case], dtype=torch.bfloat16)
    plain, copies = DecodeModel(model), DecodeModel(model, fp32_copies=True)
    assert copies.fp32_copies and not plain.fp32_copies
    tokens = torch.randint(0, 300, (4, 6), generator=torch.Generator().manual_seed(8))
    one = tokens[:1]
    assert torch.equal(
        run_steps(plain.step, plain.zero_state(1), one), run_steps(copies.step, copies.zero_state(1), one)
    )
    with torch.no_grad():
        reference = DecodeModel(model.double(), layout="linear")
        truth = run_steps(reference.step, reference.zero_state(4), tokens)
    model.bfloat16()
    ours = run_steps(copies.step, copies.zero_state(4), tokens).double()
    theirs = run_steps(plain.step, plain.zero_state(4), tokens).double()
    assert relative_error(ours, truth) <= 1.5 * relative_error(theirs, truth) + 1e-3
    matrix_bytes = sum(
        p.numel() * 2 for n, p in model.named_parameters() if p.dim() == 2 and n != "emb.weight"
    )
    monkeypatch.setattr(decode, "available_memory_bytes", lambda: 3 * matrix_bytes)
    roomy = DecodeModel(model, fp32_copies=None)
    assert roomy.head.kind == "onednn" and not roomy.fp32_copies  # copies would take over half: none
    monkeypatch.setattr(decode, "available_memory_bytes", lambda: 1 << 40)
    assert DecodeModel(model, fp32_copies=None).fp32_copies


@pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN bf16 needs AVX-512")
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_emulated_bf16_prefill_is_as_close_to_float64_as_the_models_own(
    case, build_model, relative_error, monkeypatch
):
    import eaglefinch.model.decode as decode
    from eaglefinch.generation.context import prefill

    monkeypatch.setattr(decode, "native_bf16_available", lambda: False)
    model = build_model(CASES[case], dtype=torch.bfloat16)
    tokens = torch.randint(0, 300, (70,), generator=torch.Generator().manual_seed(6)).tolist()
    with torch.no_grad():
        reference, _ = model.double()(torch.tensor([tokens]))
    model.bfloat16()
    decoder = DecodeModel(model, layout="onednn")
    plain = prefill(model, tokens).logits.double()
    fp32_products = []  # the decoder's own F.linear calls, seen with their inputs' dtype

    class Functional:
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        def linear(self, x, weight, *rest):
            fp32_products.append(x.dtype == weight.dtype == torch.float32)
            return torch.nn.functional.linear(x, weight, *rest)

    monkeypatch.setattr(decode, "F", Functional())
    upcast = prefill(model, tokens, decoder=decoder).logits.double()
    # every block matrix of the 70 rows; not the last block's channel mixing nor the head (1 row each)
    assert fp32_products == [True] * (8 * CASES[case].n_layer - 3)
    assert relative_error(upcast, reference[:, -1]) < 2 * relative_error(plain, reference[:, -1]) + 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_no_second_copy_of_the_matrices_when_memory_is_short(dtype, build_model, monkeypatch):
    """The packed layouts copy the matrices; with less than twice their size available the default
    reads the model's own tensors ("linear"), and decodes the same."""
    import eaglefinch.model.decode as decode

    model = build_model(CASES["finch"], dtype=dtype)
    assert DecodeModel(model).head.kind != "linear" or (
        dtype == torch.bfloat16 and not onednn_bf16_available()
    )
    monkeypatch.setattr(decode, "available_memory_bytes", lambda: 100_000)
    decoder = DecodeModel(model)
    assert decoder.head.kind == "linear" and decoder.head.weight.data_ptr() == model.head.weight.data_ptr()
    assert all(m.kind == "linear" for layer in decoder.layers for m in layer.matrices())


def test_onednn_layout_refuses_float64(build_model):
    with pytest.raises(ConfigError, match="onednn"):
        DecodeModel(build_model(CASES["finch"]).double(), layout="onednn")


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("layout", ["transposed", "onednn"])
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_fp32_packed_layouts_are_close_to_float64(case, layout, batch, build_model, relative_error):
    """The packed fp32 layouts only reorder the sums: as close to a float64 run as "linear" is."""
    model = build_model(CASES[case])
    tokens = torch.randint(0, 300, (batch, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference, _ = model.double()(tokens)
    model.float()
    a = DecodeModel(model, layout="linear")
    b = DecodeModel(model, layout=layout)
    assert b.layers[0].regrouped_state_math and not a.layers[0].regrouped_state_math
    if case == "finch":  # its LoRA matrices take MKL's transposed product in every fp32 packed layout
        assert b.layers[0].maa_w1.kind == b.layers[0].decay_w2.kind == "transposed"
    la = run_steps(a.step, a.zero_state(batch), tokens)
    lb = run_steps(b.step, b.zero_state(batch), tokens)
    assert relative_error(la, reference) < 1e-5
    assert relative_error(lb, reference) < 1e-5
    assert relative_error(lb, la) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_int8_is_close_to_exact(case, dtype, build_model, relative_error):
    """int8 weight-only decoding is an approximation: logits within a few percent over 16 steps."""
    model = build_model(CASES[case], dtype=dtype)
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(4))
    exact = DecodeModel(model)
    int8 = DecodeModel(model, weights="int8")
    le = run_steps(exact.step, exact.zero_state(2), tokens)
    lq = run_steps(int8.step, int8.zero_state(2), tokens)
    assert relative_error(lq, le) < 0.05
    # the most likely next token mostly agrees
    agree = (lq.argmax(-1) == le.argmax(-1)).float().mean().item()
    assert agree > 0.8


def test_int8_rows_reconstruct_the_weights():
    """Per-row symmetric quantisation: every weight within half a step (scale / 2) of the original."""
    from eaglefinch.model.decode import Linear

    w = torch.randn(64, 48) * torch.linspace(0.01, 3, 64)[:, None]
    q = Linear(w, "int8")
    back = q.weight.float() * q.scale.float()[:, None]
    assert ((back - w).abs() <= q.scale.float()[:, None] * 0.5 + 1e-2 * w.abs()).all()
    x = torch.randn(3, 48)
    assert ((q(x) - x @ w.t()).abs().max() / (x @ w.t()).abs().max()).item() < 0.02


needs_fbgemm = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="needs torch's FBGEMM (x86)"
)


@needs_fbgemm
def test_w8a8_product_is_within_its_rounding_bound():
    """|y - x W^T| <= sum_j |w - w_q|_ij |x_j| + |w_q|_ij |x - x_q|_j, with each rounding at most half
    a step: the weight step is the row's scale, the input step its range (with 0) over 127 levels."""
    from eaglefinch.model.decode import Linear

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=gen) * torch.linspace(0.01, 3, 64)[:, None]
    q = Linear(w, "w8a8")
    scale = w.abs().amax(dim=1) / 127
    w_q = torch.round(w / scale[:, None]) * scale[:, None]
    for x in (torch.randn(3, 96, generator=gen), torch.relu(torch.randn(1, 96, generator=gen)).square()):
        step = (x.amax(dim=1).clamp_min(0) - x.amin(dim=1).clamp_max(0)) / 127  # per call: one row here
        bound = (w - w_q).abs() @ x.abs().t() + w_q.abs().sum(dim=1, keepdim=True) * step.max() / 2
        err = (q(x) - x @ w.t()).abs()
        assert (err <= bound.t() * 1.001 + 1e-5).all()
        assert err.max() > 0  # an approximation indeed, not the fp32 product


@needs_fbgemm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_w8a8_is_close_to_exact(case, dtype, build_model, relative_error):
    """int8 weights and 7-bit inputs: coarser than weight-only int8, still the same next tokens."""
    model = build_model(CASES[case], dtype=dtype)
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(4))
    exact, w8a8 = DecodeModel(model), DecodeModel(model, weights="w8a8")
    le = run_steps(exact.step, exact.zero_state(2), tokens)
    lq = run_steps(w8a8.step, w8a8.zero_state(2), tokens)
    assert relative_error(lq, le) < 0.15
    assert (lq.argmax(-1) == le.argmax(-1)).float().mean().item() > 0.8
    assert w8a8.weight_bytes() == DecodeModel(model, weights="int8").weight_bytes()


def test_weight_bytes_counts_every_matrix_once(build_model):
    config = CASES["finch"]
    model = build_model(config)
    C, A, F, V, L = config.n_embd, config.dim_att, config.dim_ffn, config.vocab_size, config.n_layer
    per_layer = 5 * A * C + 2 * F * C + C * C  # r k v g o, ffn key and value, ffn receptance
    expected = 4 * (L * per_layer + V * C + C)  # + head + one embedding row
    assert DecodeModel(model).weight_bytes() == expected
    int8 = DecodeModel(model, weights="int8").weight_bytes()
    scales = 2 * (L * (4 * A + C + F + C + C) + V)  # one bf16 scale per output row
    assert int8 == (L * per_layer + V * C) + 4 * C + scales  # int8 matrices, the fp32 embedding row


def test_bad_arguments(finch):
    with pytest.raises(ConfigError, match="weights"):
        DecodeModel(finch, weights="int4")
    with pytest.raises(ConfigError, match="layout"):
        DecodeModel(finch, layout="columns")
    decoder = DecodeModel(finch)
    with pytest.raises(ConfigError, match="one token per row"):
        decoder.step(torch.tensor([[1, 2]]), decoder.zero_state(1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_gpu_decoder_matches_model(case, dtype, build_model, relative_error):
    model = build_model(CASES[case], dtype=dtype).to("cuda")
    tokens = torch.randint(0, 300, (3, 8), generator=torch.Generator().manual_seed(5)).cuda()
    decoder = DecodeModel(model)
    ours = run_steps(decoder.step, decoder.zero_state(3), tokens)
    with torch.no_grad():
        state, outs = model.zero_state(3), []
        for t in range(tokens.shape[1]):
            out, state = model(tokens[:, t : t + 1], state)
            outs.append(out[:, 0])
    assert relative_error(ours, torch.stack(outs, dim=1)) < 1e-2


@pytest.mark.parametrize(
    "dtype, bound", [(torch.float32, 2e-3), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"]
)
@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_fp16_weights_are_close_to_exact(case, dtype, bound, build_model, relative_error):
    """fp16 matrices, fp32 products: 11 significant bits per weight instead of 24 (fp32) or 8 (bf16)."""
    model = build_model(CASES[case], dtype=dtype)
    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(6))
    exact, fp16 = DecodeModel(model), DecodeModel(model, weights="fp16")
    assert (
        relative_error(
            run_steps(fp16.step, fp16.zero_state(2), tokens),
            run_steps(exact.step, exact.zero_state(2), tokens),
        )
        < bound
    )
    c = CASES[case]
    matrices = (
        c.n_layer * (5 * c.dim_att * c.n_embd + 2 * c.dim_ffn * c.n_embd + c.n_embd**2)
        + c.vocab_size * c.n_embd
    )
    assert fp16.weight_bytes() == 2 * matrices + c.n_embd * model.emb.weight.element_size()


def test_fp16_lossless_flag():
    from eaglefinch.model.decode import Linear

    w = (torch.randn(16, 8) * 0.1).bfloat16()
    assert Linear(w, "fp16").lossless
    w[0, 0] = 1e-7  # below fp16's normal range: fewer bits there
    w[1, 1] = 1e5  # above fp16's largest value
    assert not Linear(w, "fp16").lossless
    assert not Linear(torch.randn(16, 8), "fp16").lossless  # fp32 weights have 24 significant bits


@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_prefill_through_the_packed_matrices_is_close_to_float64(case, build_model, relative_error):
    """A prompt's products through the decoder's oneDNN matrices: as close to float64 as the model's own."""
    from eaglefinch.generation.context import prefill

    if not torch.backends.mkldnn.is_available():
        pytest.skip("needs oneDNN (torch's CPU build)")
    model = build_model(CASES[case])
    tokens = torch.randint(0, 300, (70,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        reference, _ = model.double()(torch.tensor([tokens]))
    model.float()
    decoder = DecodeModel(model, layout="onednn")
    plain = prefill(model, tokens)
    packed = prefill(model, tokens, decoder=decoder)
    assert relative_error(plain.logits, reference[:, -1]) < 1e-5
    assert relative_error(packed.logits, reference[:, -1]) < 1e-5
    assert 0 < relative_error(packed.logits, plain.logits) < 1e-5  # really another product
    assert relative_error(packed.state.wkv, plain.state.wkv) < 1e-5
    # the model's layers are back to their own products afterwards
    assert not any("forward" in vars(m) for m in model.modules())


def test_packed_products_apply_only_to_their_own_model_and_exact_matrices(build_model):
    from eaglefinch.generation.context import prefill

    model, other = build_model(CASES["finch"]), build_model(CASES["finch"])
    tokens = list(range(1, 40))
    plain = prefill(other, tokens)
    # a decoder packed from another model, or one whose matrices are not the model's: no change
    for decoder in (DecodeModel(model, layout="onednn"), DecodeModel(other, layout="linear")):
        assert torch.equal(prefill(other, tokens, decoder=decoder).logits, plain.logits)
    # without gradients the decoder's matrices take over the layers; with gradients on (training)
    # the model keeps its own differentiable products, bitwise F.linear's
    decoder = DecodeModel(other, layout="onednn")
    key = other.blocks[0].att.key
    with torch.no_grad(), decoder.products_for(other):
        assert "forward" in vars(key)
    x = torch.randn(3, 128, requires_grad=True)
    with torch.enable_grad(), decoder.products_for(other):
        assert "forward" not in vars(key)
        y = key(x)
    assert torch.equal(y, torch.nn.functional.linear(x, key.weight))
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_regrouped_state_math_is_as_close_to_float64_as_the_models(case, build_model, relative_error):
    """bf16 weights, batch 4: the regrouped state sums against a float64 run of the same weights,
    as close as the model's own operations are; and an unknown choice is refused."""
    model = build_model(CASES[case], dtype=torch.bfloat16)
    tokens = torch.randint(0, 300, (4, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference, _ = model.double()(tokens)
    model.bfloat16()
    errors = {}
    for state_math in ("model", "regrouped"):
        decoder = DecodeModel(model, layout="linear", state_math=state_math)
        assert decoder.layers[0].regrouped_state_math == (state_math == "regrouped")
        errors[state_math] = relative_error(run_steps(decoder.step, decoder.zero_state(4), tokens), reference)
    assert errors["regrouped"] < 1.5 * errors["model"] + 1e-3, errors
    with pytest.raises(ConfigError, match="state_math"):
        DecodeModel(model, state_math="fused")
