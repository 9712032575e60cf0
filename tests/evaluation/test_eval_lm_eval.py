"""The ``eaglefinch`` lm-eval model on a local task, fully offline, with its numbers checked by hand.

lm-eval is an optional extra (``eaglefinch[eval]``), not part of ``test``: it pulls datasets,
pyarrow, pandas, scikit-learn and nltk. Without it these tests skip.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra eaglefinch[eval]")

from eaglefinch.evaluation import encode_pair  # noqa: E402

DOCS = [
    {"question": "The sky is", "choices": ["blue", "green", "made of cheese"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
    {"question": "Water boils at", "choices": ["100 degrees", "ten degrees", "noon", "night"], "answer": 1},
]

TASK = """\
task: eaglefinch_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_task")
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "eaglefinch_local_mc.yaml").write_text(TASK.format(data=data))
    return root


def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    c_ids, x_ids = encode_pair(tokenizer.encode, context, continuation)
    tokens = [0, *c_ids, *x_ids]
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    logprobs = F.log_softmax(logits[0].double(), dim=-1)[len(c_ids) : len(tokens) - 1]
    return float(logprobs.gather(1, torch.tensor(x_ids)[:, None]).sum())


def test_simple_evaluate_local_task(task_dir, finch_path, finch, tokenizer):
    from lm_eval.tasks import TaskManager

    import eaglefinch.evaluation.lm_eval_adapter  # noqa: F401  (registers "eaglefinch")

    results = lm_eval.simple_evaluate(
        model="eaglefinch",
        model_args=f"pretrained={finch_path},dtype=float32,batch_size=2",
        tasks=["eaglefinch_local_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = results["samples"]["eaglefinch_local_mc"]
    assert len(samples) == len(DOCS)
    correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = DOCS[sample["doc_id"]]
        context = f"Q: {doc['question']}\nA:"
        by_hand = [hand_loglikelihood(finch, tokenizer, context, " " + choice) for choice in doc["choices"]]
        harness = [float(resp[0][0]) for resp in sample["resps"]]
        assert harness == pytest.approx(by_hand, abs=1e-3)
        correct += int(max(range(len(by_hand)), key=by_hand.__getitem__) == doc["answer"])
    acc = results["results"]["eaglefinch_local_mc"]["acc,none"]
    assert acc == pytest.approx(correct / len(DOCS))


def test_model_args_and_registration(finch_path):
    from lm_eval.api.registry import get_model

    from eaglefinch.evaluation.lm_eval_adapter import EaglefinchLM

    assert get_model("eaglefinch") is EaglefinchLM
    lm = EaglefinchLM.create_from_arg_string(f"pretrained={finch_path},dtype=bfloat16,batch_size=3")
    assert lm.harness.batch_size == 3
    assert lm.harness.model.dtype == torch.bfloat16
    assert lm.eot_token_id == 0
