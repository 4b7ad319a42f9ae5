"""Task accuracy and preference accuracy: the numbers of the before/after table."""

from __future__ import annotations

import json

import pytest
import torch

from llm_course.data import tasks as T
from llm_course.evaluation import accuracy as A
from llm_course.evaluation import preference_accuracy, response_logprobs, task_accuracy
from llm_course.evaluation.cli import main as eval_main
from llm_course.models.config import load_model_config
from llm_course.models.hf_weights import build_model
from llm_course.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def records():
    return list(T.iter_examples(24, "eval", seed=0, unique=True))


def tiny_qwen2(seed: int = 0, initializer_range: float = 0.3):
    """A random qwen2-tiny with large weights, so that its greedy replies vary from prompt to prompt."""
    cfg = load_model_config("qwen2-tiny")
    cfg.initializer_range = initializer_range
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def oracle_generate(tok, records, wrong_rows=()):
    """A stand-in for generate(): reads each (left-padded) prompt and writes its answer, then <|im_end|>.

    Rows whose record index is in ``wrong_rows`` get the record's plausible wrong answer instead.
    """
    import random

    by_prompt = {}
    rng = random.Random(0)
    for i, r in enumerate(records):
        reply = T.wrong_answer(r, rng) if i in wrong_rows else r["answer"]
        by_prompt[tuple(A.render_prompt(tok, r["prompt"]))] = tok.encode(reply + "<|im_end|>")
    pad = tok.token_to_id("<|endoftext|>")

    def fake(model, ids, mask, *, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
        assert pad_token_id == pad and tok.token_to_id("<|im_end|>") in eos_token_id
        rows = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            prompt = tuple(t for t, keep in zip(row, m) if keep)  # left padding removed
            reply = by_prompt[prompt][:max_new_tokens]
            rows.append(row + reply + [pad] * (max_new_tokens - len(reply)))
        return torch.tensor(rows)

    return fake


def test_a_perfect_oracle_scores_one(monkeypatch, tok, records):
    monkeypatch.setattr(A, "generate", oracle_generate(tok, records))
    result = task_accuracy(tiny_qwen2(), tok, records, max_new_tokens=20, batch_size=5)
    assert result["accuracy"] == 1.0 and result["correct"] == result["total"] == len(records)
    assert set(result["per_task"]) == set(T.TASKS)
    assert all(r["accuracy"] == 1.0 for r in result["per_task"].values())


def test_wrong_replies_are_counted_per_task(monkeypatch, tok, records):
    wrong = {1, 2, 9, 23}  # records are tasks in turn: sort, length, sort, python
    monkeypatch.setattr(A, "generate", oracle_generate(tok, records, wrong))
    result = task_accuracy(tiny_qwen2(), tok, records, max_new_tokens=20, batch_size=7, keep_rows=True)
    assert result["correct"] == len(records) - len(wrong)
    assert result["accuracy"] == pytest.approx((len(records) - len(wrong)) / len(records))
    for task, r in result["per_task"].items():
        expected_wrong = sum(1 for i in wrong if records[i]["task"] == task)
        assert (r["total"] - r["correct"], r["total"]) == (expected_wrong, 3), task
    assert [row["correct"] for row in result["rows"]] == [i not in wrong for i in range(len(records))]
    assert [row["prompt"] for row in result["rows"]] == [r["prompt"] for r in records]  # back in order


def test_task_accuracy_on_a_random_model_batches_like_one_prompt_at_a_time(tok, records):
    model = tiny_qwen2()
    subset = records[:10]
    batched = task_accuracy(model, tok, subset, max_new_tokens=6, batch_size=4, keep_rows=True, n_samples=3)
    alone = task_accuracy(model, tok, subset, max_new_tokens=6, batch_size=1, keep_rows=True)
    assert [r["completion"] for r in batched["rows"]] == [r["completion"] for r in alone["rows"]]
    assert batched["total"] == 10 and 0 <= batched["accuracy"] <= 1
    assert sum(r["total"] for r in batched["per_task"].values()) == 10
    assert len(batched["samples"]) == 3 and {"prompt", "completion", "answer", "correct", "task"} <= set(batched["samples"][0])
    # the reply of one prompt, generated here by hand: greedy, stopped at <|im_end|>
    ids = A.render_prompt(tok, subset[0]["prompt"])
    seq = torch.tensor([ids])
    for _ in range(6):
        nxt = model(seq)[0, -1].argmax()
        if nxt.item() in A.stop_ids(tok):
            break
        seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    assert batched["rows"][0]["completion"] == tok.decode(seq[0, len(ids) :].tolist())


def test_task_accuracy_refuses_bad_records(tok):
    with pytest.raises(ValueError, match="eval record 0"):
        task_accuracy(tiny_qwen2(), tok, [{"task": "juggle", "prompt": "x", "answer": "y"}])


@torch.no_grad()
def _logprob_by_hand(model, prompt: list[int], response: list[int]) -> float:
    """Sum of log p(token | everything before it) over the response, one growing prefix at a time."""
    total = 0.0
    for k, token in enumerate(response):
        prefix = torch.tensor([prompt + response[:k]])
        total += torch.log_softmax(model(prefix)[0, -1].double(), -1)[token].item()
    return total


def test_response_logprobs_match_a_token_by_token_sum(tok):
    model = tiny_qwen2(1, 0.05)
    seqs = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([3, 4, 5, 6, 7, 8], [2])]
    got = response_logprobs(model, seqs, pad_id=0, batch_size=2)
    want = torch.tensor([_logprob_by_hand(model, p, r) for p, r in seqs], dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_preference_accuracy_is_the_share_of_pairs_the_reward_prefers(tok):
    pairs = [{"prompt": "Sort the list: 3 1 2", "chosen": "1 2 3", "rejected": "1 3 2"},
             {"prompt": "Largest of: 4 9", "chosen": "9", "rejected": "4"},
             {"prompt": [{"role": "user", "content": "How many items: 1 1"}], "chosen": "2", "rejected": "3"}]  # fmt: skip
    policy, ref = tiny_qwen2(1, 0.05), tiny_qwen2(2, 0.05)
    same = preference_accuracy(policy, policy, pairs, beta=0.1, tokenizer=tok)
    assert same["accuracy"] == 0.0 and same["margin"] == 0.0 and same["total"] == 3  # a tie is not a win
    result = preference_accuracy(policy, ref, pairs, beta=0.5, tokenizer=tok)
    rewards = []
    for pair in pairs:
        prompt = A.render_prompt(tok, pair["prompt"])
        r = {}
        for side in ("chosen", "rejected"):
            resp = tok.encode(pair[side] + "<|im_end|>")
            r[side] = 0.5 * (_logprob_by_hand(policy, prompt, resp) - _logprob_by_hand(ref, prompt, resp))
        rewards.append(r)
    assert result["accuracy"] == pytest.approx(sum(r["chosen"] > r["rejected"] for r in rewards) / 3)
    assert result["margin"] == pytest.approx(sum(r["chosen"] - r["rejected"] for r in rewards) / 3, abs=1e-4)
    flipped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    assert preference_accuracy(policy, ref, flipped, beta=0.5, tokenizer=tok)["margin"] == pytest.approx(-result["margin"], abs=1e-5)


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    T.write_task_files(tmp_path, sft=0, sft_val=0, dpo=0, dpo_val=4, eval_count=8)
    out = tmp_path / "result.json"
    args = ["--model", "qwen2-tiny", "--eval", str(tmp_path / "eval.jsonl"), "--out", str(out), "--max-new-tokens", "4",
            "--pairs", str(tmp_path / "dpo_val.jsonl"), "--ref-model", "qwen2-tiny", "--device", "cpu"]  # fmt: skip
    assert eval_main(args) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "all" in printed and "preference accuracy" in printed
    result = json.loads(out.read_text())
    assert result["total"] == 8 and set(result["per_task"]) == set(T.TASKS)
    assert result["preference"]["total"] == 4 and result["preference"]["accuracy"] == 0.0  # same weights: all ties
    assert eval_main(["--model", "qwen2-tiny", "--eval", str(tmp_path / "missing.jsonl")]) == 2
