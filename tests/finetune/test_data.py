"""Fine-tuning data: the chat rendering, the loss mask, batching and one-line errors."""

from __future__ import annotations

import math

import pytest
import torch

from eaglefinch import WorldTokenizer, chat_format
from eaglefinch.errors import DataError
from eaglefinch.finetune.data import IGNORE, ExampleBatches, read_examples
from eaglefinch.train.loop import LossModule


@pytest.fixture(scope="module")
def tokenizer():
    return WorldTokenizer()


def test_chat_renders_in_the_world_format_and_trains_only_the_replies(tmp_path, tokenizer, write_jsonl):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a bird."},
        {"role": "assistant", "content": "A finch."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "An eagle."},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    (example,) = read_examples(path, tokenizer, ctx_len=200)
    assert tokenizer.decode(example.tokens.tolist()) == (
        "System: Be brief.\n\nUser: Name a bird.\n\nAssistant: A finch.\n\nUser: Another?\n\n"
        "Assistant: An eagle.\n\n"
    )
    targets = example.tokens[1:]
    trained = tokenizer.decode(targets[example.trained].tolist())
    assert trained == " A finch.\n\n An eagle.\n\n"  # the replies and the blank lines that end them
    everything = read_examples(path, tokenizer, ctx_len=200, mask_prompt=False)[0]
    assert everything.trained.all()


def test_text_lines_and_txt_files_are_documents_ending_in_token_0(tmp_path, tokenizer, write_jsonl):
    text = "In the beginning God created the heaven and the earth. " * 6
    ids = tokenizer.encode(text)
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    write_jsonl(tmp_path / "docs.jsonl", [{"text": text}])
    for name in ("book.txt", "docs.jsonl"):
        examples = read_examples(tmp_path / name, tokenizer, ctx_len=16)
        joined = [int(examples[0].tokens[0])] + [int(t) for e in examples for t in e.tokens[1:]]
        assert joined == ids + [0]  # consecutive windows overlap by one token, like the corpus's
        assert all(len(e.tokens) <= 17 and e.trained.all() for e in examples)


def test_batches_pad_with_ignored_targets_and_are_a_function_of_the_index(tmp_path, tokenizer, write_jsonl):
    records = [
        {"messages": [{"role": "user", "content": "x" * (i + 1)}, {"role": "assistant", "content": "y"}]}
        for i in range(5)
    ]
    examples = read_examples(write_jsonl(tmp_path / "c.jsonl", records), tokenizer, ctx_len=64)
    batches = ExampleBatches(examples, 64, seed=3)
    inputs, targets = batches.batch(0, 5)
    lengths = sorted(e.n_targets for e in examples)
    assert inputs.shape == targets.shape == (5, lengths[-1])
    assert sorted(int((row != IGNORE).sum()) for row in targets) == [2] * 5  # " y" and "\n\n"
    again = ExampleBatches(examples, 64, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again.batch(3, 4), batches.batch(3, 4), strict=True))
    first_epoch = [tuple(batches.batch(i, 1)[0][0].tolist()) for i in range(5)]
    assert len(set(first_epoch)) == 5  # every example once per epoch


class FixedLogits(torch.nn.Module):
    """Logits that give target token ``c`` the logit ``a_t = t + 1`` at position t, and 0 elsewhere."""

    def __init__(self, targets, vocab):
        super().__init__()
        self.targets, self.vocab = targets, vocab

    def forward(self, inputs, state=None):
        B, T = inputs.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            for t in range(T):
                if self.targets[b, t] >= 0:
                    logits[b, t, self.targets[b, t]] = t + 1.0
        return logits, None


def test_the_loss_ignores_prompt_tokens_hand_computed():
    V = 10
    # one row of five positions: the first three are prompt (ignored), the last two are the reply
    inputs = torch.tensor([[1, 2, 3, 4, 5]])
    tokens = torch.tensor([[2, 3, 4, 5, 6]])
    targets = torch.tensor([[IGNORE, IGNORE, IGNORE, 5, 6]])
    module = LossModule(FixedLogits(tokens, V), l2wrap=0.0)
    # position t: -log(e^(t+1) / (e^(t+1) + 9)); the reply sits at t = 3 and t = 4
    expected = sum(-(t + 1) + math.log(math.exp(t + 1) + V - 1) for t in (3, 4)) / 2
    assert module(inputs, targets).item() == pytest.approx(expected, rel=1e-6)
    everything = sum(-(t + 1) + math.log(math.exp(t + 1) + V - 1) for t in range(5)) / 5
    assert module(inputs, tokens).item() == pytest.approx(everything, rel=1e-6)
    assert module(inputs, torch.full_like(targets, IGNORE)).item() == 0.0  # nothing trained: 0, not NaN


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "role 'robot'"),
        ('{"messages": [{"role": "user"}]}', "needs a 'content' string"),
        ('{"messages": []}', "non-empty list"),
        ('{"text": 5}', "'text' must be a string"),
        ('{"prompt": "hi"}', "expected"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, tokenizer, line, message):
    path = tmp_path / "bad.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_examples(path, tokenizer, ctx_len=32)
    text = str(error.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text


def test_unusable_files_are_refused(tmp_path, tokenizer, write_jsonl):
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    no_reply = write_jsonl(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    cases = {
        tmp_path / "missing.jsonl": "no such file",
        tmp_path / "data.csv": ".txt or .jsonl",
        tmp_path / "latin1.txt": "not UTF-8",
        no_reply: "no token to train on",
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message):
            read_examples(path, tokenizer, ctx_len=32)


def test_segments_join_to_the_rendered_transcript():
    messages = [{"role": "user", "content": "a\n\n\nb"}, {"role": "assistant", "content": " c "}]
    pieces = chat_format.segments(messages)
    assert "".join(text for text, _ in pieces) == chat_format.render(messages, add_generation_prompt=False)
    assert [text for text, reply in pieces if reply] == [" c\n\n"]


def test_the_shipped_demo_chat_file_is_valid_chat_data(tokenizer):
    from eaglefinch.demo import demo_chat_path

    examples = read_examples(demo_chat_path(), tokenizer, ctx_len=256)
    assert len(examples) >= 20 and all(e.trained.any() and not e.trained.all() for e in examples)
    assert demo_chat_path().stat().st_size < 20_000


def test_token_counts_are_the_examples_real_lengths(tmp_path, tokenizer, write_jsonl):
    records = [{"text": "word " * (3 * i + 1)} for i in range(4)]
    examples = read_examples(write_jsonl(tmp_path / "t.jsonl", records), tokenizer, ctx_len=64)
    batches = ExampleBatches(examples, 64, seed=1)
    lengths = sum(e.n_targets for e in examples)
    assert batches.tokens_before(4) == lengths and batches.tokens_before(8) == 2 * lengths
    assert batches.tokens_before(2) == sum(int((batches.batch(i, 1)[0] != 0).sum()) for i in range(2))
