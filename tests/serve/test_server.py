"""``eaglefinch serve`` as users drive it: the official client against a server on 127.0.0.1.

The oracle is ``eaglefinch.generate`` on the same checkpoint in the test process: a request's
text must be what its prompt gives alone, whatever else the server is decoding at the time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import eaglefinch
import eaglefinch.generation
from eaglefinch import chat_format

from .conftest import MAX_PROMPT_TOKENS

MODEL = "tiny-finch"


def solo(reference, tokenizer, prompt: str, max_tokens: int, **options) -> str:
    return eaglefinch.generate(reference, tokenizer, prompt, max_tokens, **options)


def streamed_text(client, **request) -> tuple[str, list]:
    chunks = list(client.completions.create(model=MODEL, stream=True, **request))
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def test_models_and_health(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = server.health()
    assert health["status"] == "ok" and health["model"] == MODEL


@pytest.mark.parametrize("prompt", ["The quick brown fox", "Hello", "1 2 3 4 5 6 7"])
def test_greedy_completion_equals_generate(server, reference, tokenizer, prompt):
    client = server.client()
    expected = solo(reference, tokenizer, prompt, 24, temperature=0)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    assert response.choices[0].text == expected
    assert response.choices[0].finish_reason in ("length", "stop")
    generation = eaglefinch.generation.start(reference, tokenizer, prompt, 24, temperature=0)
    generation.run()
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert response.usage.completion_tokens == len(generation.new_tokens[0])
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    text, chunks = streamed_text(
        client, prompt=prompt, max_tokens=24, temperature=0, stream_options={"include_usage": True}
    )
    assert text == expected
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == response.choices[0].finish_reason


def test_token_id_prompts_and_prompt_lists(server, reference, tokenizer):
    client = server.client()
    ids = tokenizer.encode("Once upon a time")
    expected = solo(reference, tokenizer, "Once upon a time", 10, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == expected
    prompts = ["Once upon a time", "In the beginning"]
    both = client.completions.create(model=MODEL, prompt=prompts, max_tokens=10, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [
        solo(reference, tokenizer, p, 10, temperature=0) for p in prompts
    ]
    assert both.usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)


def test_seeded_sampling_and_penalties_equal_generate(server, reference, tokenizer):
    client = server.client()
    prompt = "A seeded sample:"
    expected = solo(reference, tokenizer, prompt, 30, temperature=0.9, top_p=0.8, top_k=50, seed=7)
    response = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=30,
        temperature=0.9,
        top_p=0.8,
        seed=7,
        extra_body={"top_k": 50},
    )
    assert response.choices[0].text == expected
    penalised = solo(
        reference,
        tokenizer,
        prompt,
        30,
        temperature=0,
        alpha_presence=-2.0,
        alpha_frequency=-2.0,
        alpha_decay=1.0,
    )
    # negative penalties favour repeats, which a random model's greedy text otherwise lacks
    assert penalised != solo(reference, tokenizer, prompt, 30, temperature=0)
    response = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=30,
        temperature=0,
        presence_penalty=-2.0,
        frequency_penalty=-2.0,
    )
    assert response.choices[0].text == penalised


def test_stop_strings(server, reference, tokenizer):
    client = server.client()
    prompt = "Stop strings:"
    full = solo(reference, tokenizer, prompt, 30, temperature=0)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = solo(reference, tokenizer, prompt, 30, temperature=0, stop=[stop])
    assert expected == full[: full.index(stop)]
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=stop)
    assert response.choices[0].text == expected
    assert response.choices[0].finish_reason == "stop"
    text, _ = streamed_text(client, prompt=prompt, max_tokens=30, temperature=0, stop=[stop, "never seen"])
    assert text == expected


def test_chat_equals_the_rendered_prompt_through_generate(server, reference, tokenizer):
    client = server.client()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour.\n\n(one word)"},
    ]
    prompt = chat_format.render(messages)
    assert prompt == "System: You are terse.\n\nUser: Name a colour.\n(one word)\n\nAssistant:"
    expected = solo(reference, tokenizer, prompt, 20, temperature=0, stop=["\n\n"])
    expected = expected[1:] if expected.startswith(" ") else expected
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    message = response.choices[0].message
    assert message.role == "assistant" and message.content == expected
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt))
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=20, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == message_finish(response)


def message_finish(response) -> str:
    return response.choices[0].finish_reason


def test_second_chat_turn_prefills_only_the_new_tokens(server, reference, tokenizer):
    client = server.client()
    # the transcript puts a space after "Assistant:", so the reply must begin with one to be found
    # again in the next turn's text; a random model's replies do not always, so pick a question
    for i in range(30):
        history = [{"role": "user", "content": f"Tell me about the sea, question {i}."}]
        first_prompt = chat_format.render(history)
        # the oracle: the reply generated here, its context continued with the new turn's text
        generation = eaglefinch.generation.start(
            reference, tokenizer, first_prompt, 12, temperature=0, stop=["\n\n"]
        )
        raw_reply = generation.run()[0]
        if raw_reply.startswith(" ") and chat_format.normalise(raw_reply) == raw_reply[1:]:
            break
    else:
        raise AssertionError("no reply began with a space")
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=12, temperature=0)
    reply = first.choices[0].message.content
    assert raw_reply == " " + reply
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And the sky?"}]
    prompt = chat_format.render(history)
    assert prompt.startswith(first_prompt + raw_reply)
    new_text = prompt[len(first_prompt + raw_reply) :]
    expected = solo(
        reference, tokenizer, new_text, 12, context=generation.context(), temperature=0, stop=["\n\n"]
    )

    before = server.wait_idle()["state_cache"]
    second = client.chat.completions.create(model=MODEL, messages=history, max_tokens=12, temperature=0)
    after = server.health()["state_cache"]
    assert second.choices[0].message.content == (expected[1:] if expected.startswith(" ") else expected)
    seen_before = len(tokenizer.encode(first_prompt)) + len(generation.new_tokens[0])
    new_tokens = len(tokenizer.encode(new_text))
    # only the new turn was prefilled: the state after the first reply came from the cache
    assert after["tokens_reused"] - before["tokens_reused"] == seen_before
    assert second.usage.prompt_tokens == seen_before + new_tokens
    assert after["bytes"] <= after["max_bytes"]


def test_sixteen_concurrent_streams_each_equal_their_solo_run(server, reference, tokenizer):
    requests = [
        {"prompt": f"Stream {i}: " + "word " * (i % 5), "max_tokens": 8 + 3 * i, "temperature": 0}
        for i in range(16)
    ]
    expected = [solo(reference, tokenizer, r["prompt"], r["max_tokens"], temperature=0) for r in requests]
    server.wait_idle()
    start = threading.Barrier(16)

    def run(request):
        client = server.client()
        start.wait()
        return streamed_text(client, **request)[0]

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(run, requests))
    assert texts == expected
    health = server.wait_idle()
    assert health["max_batch_seen"] > 1  # the requests really were decoded together


def test_a_cancelled_stream_frees_its_row_and_leaves_the_others_alone(server, reference, tokenizer):
    others = [{"prompt": f"Neighbour {i}", "max_tokens": 60, "temperature": 0} for i in range(4)]
    expected = [solo(reference, tokenizer, r["prompt"], r["max_tokens"], temperature=0) for r in others]
    cancelled_before = server.wait_idle()["requests_cancelled"]
    started = threading.Event()

    def cancel_one():
        client = server.client()
        stream = client.completions.create(
            model=MODEL, prompt="A very long story", max_tokens=100_000, temperature=0, stream=True
        )
        for i, _ in enumerate(stream):
            if i == 5:
                started.set()
                break
        stream.close()

    def run(request):
        started.wait(30)
        return streamed_text(server.client(), **request)[0]

    with ThreadPoolExecutor(5) as pool:
        cancel = pool.submit(cancel_one)
        texts = list(pool.map(run, others))
        cancel.result()
    assert texts == expected
    health = server.wait_idle()
    assert health["active"] == 0  # the 100,000-token row is gone
    assert health["requests_cancelled"] > cancelled_before


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return body["error"]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, tokenizer):
    url = f"{server.url}/v1/completions"
    malformed = httpx.post(
        url, content=b'{"model": "tiny-finch", "prompt": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and "JSON" in error_of(malformed)["message"]
    wrong_type = httpx.post(url, json={"model": MODEL, "prompt": "x", "temperature": "hot"})
    assert wrong_type.status_code == 400 and error_of(wrong_type)["param"] == "temperature"
    unknown_id = httpx.post(url, json={"model": MODEL, "prompt": [1, 2, 70000]})
    assert unknown_id.status_code == 400 and "70000" in error_of(unknown_id)["message"]
    bad_role = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
    )
    assert bad_role.status_code == 400

    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
    too_long = "a " * (MAX_PROMPT_TOKENS + 10)
    assert len(tokenizer.encode(too_long)) > MAX_PROMPT_TOKENS
    with pytest.raises(openai.BadRequestError, match="max-prompt-tokens"):
        client.completions.create(model=MODEL, prompt=too_long)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.completions.create(model=MODEL, prompt="x", n=2)
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.completions.create(model=MODEL, prompt="")
    # and it still serves
    assert (
        client.completions.create(model=MODEL, prompt="Still here", max_tokens=3, temperature=0)
        .choices[0]
        .text
    )


def test_zero_max_tokens(server):
    response = server.client().completions.create(model=MODEL, prompt="Nothing", max_tokens=0)
    assert response.choices[0].text == "" and response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 0


def test_serve_without_a_model_or_demo_says_what_to_pass(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from eaglefinch.cli import main; raise SystemExit(main())", "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "eaglefinch demo" in lines[0]


def test_serve_without_a_model_uses_the_demo_model(tmp_path, monkeypatch):
    from eaglefinch.cli.serve import DEMO_MODEL, resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / DEMO_MODEL).parent.mkdir(parents=True)
    (tmp_path / DEMO_MODEL).write_bytes(b"")
    assert resolve_model(None) == DEMO_MODEL
    assert str(resolve_model("other.pth")) == "other.pth"
