"""generate / stream: greedy parity with the official package, batches, stops, contexts, forks."""

from __future__ import annotations

import pytest
import torch

import eaglefinch
from eaglefinch.errors import ConfigError
from eaglefinch.generation import Context, Generation, SamplingConfig, prefill, start
from eaglefinch.testing import random_state_dict

PROMPTS = ["The quick brown fox", "Hi", "A much longer prompt, so that the rows differ in length by a lot."]


def official_greedy(official, prompt_tokens: list[int], n: int) -> list[int]:
    """Token-for-token greedy decoding with the official package (its own forward, arg-max)."""
    out, state = official.forward(prompt_tokens, None)
    tokens = []
    for _ in range(n):
        token = int(torch.argmax(out))
        tokens.append(token)
        out, state = official.forward([token], state)
    return tokens


@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_greedy_matches_the_official_package(case, configs, byte_tokenizer, rwkv_package, tmp_path):
    config = configs[case]
    path = tmp_path / "model.pth"
    torch.save(random_state_dict(config, seed=5), path)
    official = rwkv_package.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    model = eaglefinch.load(path)
    for prompt in PROMPTS[:2]:
        generation = start(model, byte_tokenizer, prompt, 24, temperature=0, stop_tokens=())
        generation.run()
        assert generation.new_tokens[0] == official_greedy(official, byte_tokenizer.encode(prompt), 24)


def test_pipeline_parity_with_penalties_bans_and_stop(configs, byte_tokenizer, rwkv_package, tmp_path):
    """The official ChatRWKV pipeline at temperature 0, with presence/frequency penalties and their
    decay, banned tokens and stop token 0: same tokens, same text."""
    import rwkv.utils

    weights = random_state_dict(configs["finch"], seed=7)
    # favour " ", "7", "12", " 1" and "c" so that greedy decoding repeats them and the penalties,
    # with spaces and digits exempt from the frequency term, change the text
    favoured = [33, 56, 257, 258, 100]
    weights["head.weight"][favoured] *= 3
    path = tmp_path / "model.pth"
    torch.save(weights, path)

    class Vocab:  # the pipeline's tokenizer interface: encode, and decode to str (strict UTF-8)
        encode = staticmethod(byte_tokenizer.encode)

        @staticmethod
        def decode(tokens):
            return byte_tokenizer.decode_bytes(tokens).decode("utf-8")

    pipeline = rwkv.utils.PIPELINE.__new__(rwkv.utils.PIPELINE)
    pipeline.model = rwkv_package.RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    pipeline.tokenizer = Vocab()
    drawn = []
    original = pipeline.sample_logits

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    pipeline.sample_logits = recording
    banned = list(range(129, 257))  # single bytes >= 0x80: the pipeline's strict decoding would fail
    prompt = "\nUser: Tell me about birds.\n\nAssistant:"
    # the same settings for both; only the names of the ban and stop lists differ
    settings = dict(temperature=0, top_p=0.5, alpha_presence=0.7, alpha_frequency=0.5, alpha_decay=0.9)
    args = rwkv.utils.PIPELINE_ARGS(**settings, token_ban=banned, token_stop=[0])
    theirs = pipeline.generate(prompt, token_count=60, args=args)
    model = eaglefinch.load(path)
    generation = start(model, byte_tokenizer, prompt, 60, **settings, banned_tokens=banned, stop_tokens=[0])
    ours = generation.run()[0]
    assert generation.new_tokens[0] == [t for t in drawn if t != 0]
    assert ours == theirs
    # the case was a real one: the penalties changed the text, and exempt tokens occurred
    plain = start(model, byte_tokenizer, prompt, 60, temperature=0, banned_tokens=banned)
    plain.run()
    assert plain.new_tokens[0] != generation.new_tokens[0]
    assert {33, 56, 257} & set(generation.new_tokens[0])


@pytest.mark.parametrize("case", ["finch", "eagle"])
def test_batch_rows_equal_prompts_alone(case, configs, build_model, byte_tokenizer):
    model = build_model(configs[case])
    together = eaglefinch.generate(model, byte_tokenizer, PROMPTS, 20, temperature=0, stop_tokens=())
    alone = [
        eaglefinch.generate(model, byte_tokenizer, p, 20, temperature=0, stop_tokens=()) for p in PROMPTS
    ]
    assert together == alone
    assert len(set(alone)) == len(alone)


def test_seeded_sampling_batch_rows_equal_alone(finch, byte_tokenizer):
    kwargs = dict(temperature=1.0, top_p=0.9, seed=42, stop_tokens=())
    together = eaglefinch.generate(finch, byte_tokenizer, PROMPTS, 20, **kwargs)
    again = eaglefinch.generate(finch, byte_tokenizer, PROMPTS, 20, **kwargs)
    assert together == again
    for i, prompt in enumerate(PROMPTS):
        alone = eaglefinch.generate(finch, byte_tokenizer, prompt, 20, **{**kwargs, "seed": 42 + i})
        assert together[i] == alone
    other = eaglefinch.generate(finch, byte_tokenizer, PROMPTS, 20, **{**kwargs, "seed": 7})
    assert other != together


def test_stream_pieces_are_whole_characters(finch, byte_tokenizer):
    """Only the three bytes of '€' and 'a' may be drawn: pieces must join into the UTF-8 decoding
    of all the bytes, which they would not if a piece ever held part of a character."""
    allowed = {0xE2 + 1, 0x82 + 1, 0xAC + 1, ord("a") + 1}
    banned = [t for t in range(300) if t not in allowed]
    kwargs = dict(temperature=3.0, seed=1, banned_tokens=banned, stop_tokens=())
    pieces = list(eaglefinch.stream(finch, byte_tokenizer, "x", 300, **kwargs))
    generation = start(finch, byte_tokenizer, "x", 300, **kwargs)
    text = generation.run()[0]
    assert "".join(pieces) == text
    assert text == byte_tokenizer.decode_bytes(generation.new_tokens[0]).decode("utf-8", errors="replace")
    assert "€" in text  # the case that matters happened
    assert len(pieces) > 10


def test_stream_of_a_batch_yields_row_indices(finch, byte_tokenizer):
    pieces = list(eaglefinch.stream(finch, byte_tokenizer, PROMPTS[:2], 10, temperature=0, stop_tokens=()))
    texts = eaglefinch.generate(finch, byte_tokenizer, PROMPTS[:2], 10, temperature=0, stop_tokens=())
    for row in range(2):
        assert "".join(p for r, p in pieces if r == row) == texts[row]


def test_stop_strings_and_stop_tokens(finch, byte_tokenizer):
    base = start(finch, byte_tokenizer, PROMPTS[0], 40, temperature=0, stop_tokens=())
    text = base.run()[0]
    tokens = base.new_tokens[0]
    stop = text[12:15]
    cut = eaglefinch.generate(
        finch, byte_tokenizer, PROMPTS[0], 40, temperature=0, stop=[stop], stop_tokens=()
    )
    assert cut == text[: text.find(stop)]
    stop_token = tokens[7]
    g = start(finch, byte_tokenizer, PROMPTS[0], 40, temperature=0, stop_tokens=[stop_token])
    g.run()
    assert g.new_tokens[0] == tokens[: tokens.index(stop_token)]
    assert g.finish_reasons == ["stop"]
    assert base.finish_reasons == ["length"] and len(tokens) == 40


def test_max_new_tokens(finch, byte_tokenizer):
    assert eaglefinch.generate(finch, byte_tokenizer, "abc", 0) == ""
    g = start(finch, byte_tokenizer, "abc", 5, temperature=0, stop_tokens=())
    g.run()
    assert len(g.new_tokens[0]) == 5
    with pytest.raises(ConfigError, match="max_new_tokens"):
        eaglefinch.generate(finch, byte_tokenizer, "abc", -1)


def test_context_continues_like_one_prompt(finch, byte_tokenizer):
    first, second = "Once upon a time, ", "there was"
    ctx = prefill(finch, byte_tokenizer.encode(first))
    kwargs = dict(temperature=0, stop_tokens=())
    assert eaglefinch.generate(
        finch, byte_tokenizer, second, 16, context=ctx, **kwargs
    ) == eaglefinch.generate(finch, byte_tokenizer, first + second, 16, **kwargs)
    # an empty prompt continues the context itself; the context is not consumed
    assert eaglefinch.generate(finch, byte_tokenizer, "", 16, context=ctx, **kwargs) == eaglefinch.generate(
        finch, byte_tokenizer, first, 16, **kwargs
    )
    # one context, several prompts: forked
    both = eaglefinch.generate(finch, byte_tokenizer, ["A", "B"], 8, context=ctx, **kwargs)
    assert both == [eaglefinch.generate(finch, byte_tokenizer, first + s, 8, **kwargs) for s in ("A", "B")]


def test_fork_gives_independent_continuations(finch, byte_tokenizer):
    ctx = prefill(finch, byte_tokenizer.encode("Shared prefix: "))
    forked = ctx.fork(3)
    config = SamplingConfig(temperature=1.0, seed=5)
    g = Generation(finch, byte_tokenizer, forked, 12, config, stop_tokens=())
    texts = g.run()
    assert len(set(texts)) == 3
    for i in range(3):
        alone = Generation(finch, byte_tokenizer, ctx, 12, config.replace(seed=5 + i), stop_tokens=())
        assert alone.run()[0] == texts[i]
    assert ctx.tokens == [byte_tokenizer.encode("Shared prefix: ")]  # forking left the original alone


def test_context_after_generation_is_the_state_after_the_text(finch, byte_tokenizer, relative_error):
    prompt = byte_tokenizer.encode("Remember this: ")
    for stop in ([], ["e"]):
        g = start(finch, byte_tokenizer, "Remember this: ", 10, temperature=0, stop=stop, stop_tokens=())
        g.run()
        after = g.context()
        assert after.tokens == [prompt + g.new_tokens[0]]
        fresh = prefill(finch, after.tokens[0])
        assert relative_error(after.logits, fresh.logits) < 1e-5
        assert relative_error(after.state.wkv, fresh.state.wkv) < 1e-5


def test_context_needs_a_finished_generation(finch, byte_tokenizer):
    g = start(finch, byte_tokenizer, "abc", 5)
    with pytest.raises(ConfigError, match="not finished"):
        g.context()


def test_bad_inputs_are_clear_errors(finch, byte_tokenizer):
    with pytest.raises(ConfigError, match="empty"):
        eaglefinch.generate(finch, byte_tokenizer, "", 5)
    with pytest.raises(ConfigError, match="top_q"):
        eaglefinch.generate(finch, byte_tokenizer, "a", 5, top_q=0.5)
    with pytest.raises(ConfigError, match="top_p"):
        eaglefinch.generate(finch, byte_tokenizer, "a", 5, top_p=0)
    with pytest.raises(ConfigError, match="rows"):
        eaglefinch.generate(
            finch,
            byte_tokenizer,
            ["a", "b", "c"],
            5,
            context=Context.cat([prefill(finch, [1]), prefill(finch, [2])]),
        )


def test_bf16_on_cpu_follows_the_bf16_model(configs, build_model, byte_tokenizer):
    """bf16 generation is the bf16 model's own greedy decoding (its T=1 forward, step by step)."""
    model = build_model(configs["finch"], dtype=torch.bfloat16)
    g = start(model, byte_tokenizer, PROMPTS[0], 12, temperature=0, stop_tokens=())
    g.run()
    with torch.no_grad():
        logits, state = model(torch.tensor([byte_tokenizer.encode(PROMPTS[0])]), last_only=True)
        tokens = []
        for _ in range(12):
            tokens.append(int(logits[0, -1].argmax()))
            logits, state = model(torch.tensor([[tokens[-1]]]), state)
    assert g.new_tokens[0] == tokens


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_generation_follows_cpu_fp32(dtype, configs, build_model, byte_tokenizer):
    gpu = build_model(configs["finch"], dtype=dtype).to("cuda")
    cpu = build_model(configs["finch"])
    a = start(gpu, byte_tokenizer, PROMPTS, 8, temperature=0, stop_tokens=())
    b = start(cpu, byte_tokenizer, PROMPTS, 8, temperature=0, stop_tokens=())
    a.run()
    b.run()
    assert [t[:3] for t in a.new_tokens] == [t[:3] for t in b.new_tokens]
    ctx = a.context()
    assert ctx.state.device.type == "cuda"
