"""lm-eval requests answered by HarnessModel (no lm-eval needed), checked against direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eaglefinch.evaluation import HarnessModel, encode_pair, split_pair


def direct_loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
    """One forward pass over [0] + context + continuation; sum the continuation's log-probs."""
    tokens = [0, *context_ids, *continuation_ids]
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    logprobs = F.log_softmax(logits[0].double(), dim=-1)[len(context_ids) : len(tokens) - 1]
    target = torch.tensor(continuation_ids)
    picked = logprobs.gather(1, target[:, None]).sum()
    return float(picked), bool((logprobs.argmax(-1) == target).all())


def test_trailing_space_moves_to_the_continuation():
    assert split_pair("Question: 2+2? Answer: ", "4") == ("Question: 2+2? Answer:", " 4")
    assert split_pair("a\n\n", "b") == ("a", "\n\nb")
    assert split_pair("a", " b") == ("a", " b")


def test_continuation_tokens_keep_the_leading_space(tokenizer):
    context, continuation = encode_pair(tokenizer.encode, "The capital of France is ", "Paris")
    assert context == tokenizer.encode("The capital of France is")
    # " Paris" is one World token with its space; the continuation must be scored as that token
    assert continuation == tokenizer.encode(" Paris")
    assert len(continuation) == 1
    assert tokenizer.decode(context + continuation) == "The capital of France is Paris"


def test_loglikelihood_matches_direct_computation(finch, tokenizer):
    harness = HarnessModel(finch, tokenizer, batch_size=2)
    requests = [
        ("The cat sat on the", " mat"),
        ("The cat sat on the", " sofa, purring"),
        ("The cat sat on the ", "moon"),  # trailing space: same split as " moon"
        ("Zwei plus zwei ist", " vier"),
        ("", "Hello"),  # empty context: scored after end of text alone
    ]
    got = harness.loglikelihood(requests)
    for (context, continuation), (logprob, greedy) in zip(requests, got, strict=True):
        c_ids, x_ids = encode_pair(tokenizer.encode, context, continuation)
        expected, expected_greedy = direct_loglikelihood(finch, c_ids, x_ids)
        assert logprob == pytest.approx(expected, abs=1e-3)
        assert greedy == expected_greedy
    assert got[2][0] == pytest.approx(
        harness.loglikelihood([("The cat sat on the", " moon")])[0][0], abs=1e-5
    )


def test_shared_prefix_equals_from_scratch(finch, tokenizer):
    requests = [("A B C D", f" {word}") for word in ("one", "two", "three four")] + [("E F", " G")]
    forked = HarnessModel(finch, tokenizer, batch_size=4, share_prefix=True).loglikelihood(requests)
    scratch = HarnessModel(finch, tokenizer, share_prefix=False).loglikelihood(requests)
    for (a, ga), (b, gb) in zip(forked, scratch, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb


def test_loglikelihood_rolling_scores_every_token_after_end_of_text(finch, tokenizer):
    text = "Hello world, this is a rolling test."
    (got,) = HarnessModel(finch, tokenizer).loglikelihood_rolling([text])
    ids = tokenizer.encode(text)
    expected, _ = direct_loglikelihood(finch, [], ids)
    assert got == pytest.approx(expected, abs=1e-3)


def test_generate_until_is_greedy_and_stops(finch, tokenizer):
    harness = HarnessModel(finch, tokenizer)
    prompt = "Once upon a time"
    tokens = [0, *tokenizer.encode(prompt)]
    expected = []
    with torch.no_grad():
        for _ in range(6):
            logits, _ = finch(torch.tensor([tokens + expected]))
            nxt = int(logits[0, -1].argmax())
            if nxt == 0:
                break
            expected.append(nxt)
    full = tokenizer.decode_bytes(expected).decode("utf-8", errors="replace")
    assert harness.generate_until(prompt, [], max_gen_toks=6) == full
    if len(full) > 2:
        stop = full[1:3]
        assert harness.generate_until(prompt, [stop], max_gen_toks=6) == full.split(stop, 1)[0]
