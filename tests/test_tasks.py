"""The course's generated tasks: deterministic, correct answers, wrong rejected answers, held-out splits."""

from __future__ import annotations

import json
import random

import pytest

from llm_course.data import tasks as T

N_PER_TASK = 150


def examples(task: str, n: int = N_PER_TASK, seed: int = 0) -> list[dict]:
    rng = random.Random(f"test/{task}/{seed}")
    return [T.sample_example(task, rng) for _ in range(n)]


def _prompt_items(prompt: str) -> list[str]:
    return prompt.split(":", 1)[1].split()


# Independent semantics of every Python task: what the function must compute.
PYTHON_SEMANTICS = {
    "add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b, "floor_divide": lambda a, b: a // b, "remainder": lambda a, b: a % b,
    "power": lambda a, b: a**b, "maximum": max, "minimum": min, "equal": lambda a, b: a == b,
    "less": lambda a, b: a < b, "greater": lambda a, b: a > b, "both": lambda a, b: a and b,
    "either": lambda a, b: a or b,
    "negate": lambda x: -x, "square": lambda x: x * x, "double": lambda x: 2 * x, "half": lambda x: x / 2,
    "increment": lambda x: x + 1, "decrement": lambda x: x - 1, "absolute": abs, "is_even": lambda x: x % 2 == 0,
    "is_odd": lambda x: x % 2 == 1, "is_zero": lambda x: x == 0, "to_string": str,
    "first": lambda s: s[0], "last": lambda s: s[-1], "length": len, "total": sum, "largest": max, "smallest": min,
}  # fmt: skip
SEQUENCE_FUNCTIONS = {"first", "last", "length", "total", "largest", "smallest"}
PROBES = {  # inputs on which every wrong body differs from the right one
    1: [(-3,), (0,), (1,), (2,), (7,)],
    2: [(7, 2), (2, 7), (3, 3), (0, 5), (-4, 3)],
    "seq": [([3, 1, 4],), ([2, 9, 5, 5],), ([-1, 6],)],
}


def _function(prompt: str, body: str):
    source = prompt.split("\n", 1)[1] + " " + body  # "def add(a, b):\n    return a + b"
    scope: dict = {}
    exec(source, scope)  # noqa: S102 -- the test's own generated code
    return next(v for k, v in scope.items() if k != "__builtins__")


def _behaviour(fn, probes):
    out = []
    for args in probes:
        try:
            value = fn(*args)
        except Exception as e:  # noqa: BLE001 -- a crash is a behaviour too
            value = type(e).__name__
        out.append(bool(value) if isinstance(value, bool) else value)
    return out


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_answers_are_right_by_an_independent_reference(task):
    for ex in examples(task):
        meta, answer = ex["meta"], ex["answer"]
        if task == "python":
            name = meta["function"]
            probes = PROBES["seq"] if name in SEQUENCE_FUNCTIONS else PROBES[len(meta["args"])]
            fn = _function(ex["prompt"], answer)
            assert _behaviour(fn, probes) == _behaviour(PYTHON_SEMANTICS[name], probes), ex
            continue
        items = meta.get("items", meta.get("words"))
        shown = _prompt_items(ex["prompt"])
        assert shown == [str(x) for x in items], ex  # the prompt shows exactly the inputs
        expected = {
            "reverse": lambda: " ".join(map(str, reversed(items))),
            "sort": lambda: " ".join(map(str, sorted(items))),
            "length": lambda: str(len(items)),
            "count": lambda: str(sum(1 for x in items if x == meta["target"])),
            "max": lambda: str(max(items)),
            "min": lambda: str(min(items)),
            "reverse_words": lambda: " ".join(reversed(items)),
        }[task]()
        assert answer == expected, ex


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_checker_accepts_the_answer_and_rejects_every_wrong_answer(task):
    rng = random.Random(1)
    for ex in examples(task):
        assert T.is_correct(task, ex, ex["answer"])
        assert T.is_correct(task, ex, "  " + ex["answer"].replace(" ", "  ") + " \n<|im_end|>\nmore text")
        wrong = T.wrong_answer(ex, rng)
        assert not T.is_correct(task, ex, wrong), (ex, wrong)
        assert not T.is_correct(task, ex, wrong + "<|im_end|>")
        assert not T.is_correct(task, ex, ex["answer"] + " 1")  # something more is not the answer
        assert not T.is_correct(task, ex, "<|im_end|>" + ex["answer"])  # the reply ended before the answer
        if task == "python":  # a wrong body behaves differently, not only reads differently
            name = ex["meta"]["function"]
            probes = PROBES["seq"] if name in SEQUENCE_FUNCTIONS else PROBES[len(ex["meta"]["args"])]
            right, bad = _function(ex["prompt"], ex["answer"]), _function(ex["prompt"], wrong)
            assert _behaviour(right, probes) != _behaviour(bad, probes), (ex, wrong)


def test_wrong_answers_are_plausible():
    """A rejected list keeps the answer's items but for one change; a rejected count is off by one."""
    rng = random.Random(2)
    for task in ("reverse", "sort", "reverse_words"):
        for ex in examples(task):
            right, wrong = ex["answer"].split(), T.wrong_answer(ex, rng).split()
            assert len(wrong) in (len(right), len(right) - 1)
            assert sorted(wrong) == sorted(right) or len(wrong) == len(right) - 1
    for task in ("length", "count"):
        for ex in examples(task):
            assert abs(int(T.wrong_answer(ex, rng)) - int(ex["answer"])) == 1


def test_code_answers_ignore_spaces_but_lists_do_not():
    ex = {"task": "python", "answer": "a + b"}
    assert T.is_correct("python", ex, "a+b<|im_end|>")
    ex = {"task": "sort", "answer": "1 2 3"}
    assert T.is_correct("sort", ex, "1 2   3")
    assert not T.is_correct("sort", ex, "123")
    with pytest.raises(ValueError, match="unknown task"):
        T.is_correct("juggle", ex, "1")


def test_answers_are_a_few_tokens_of_the_course_tokenizer():
    from llm_course.tokenizer import load_tokenizer

    tok = load_tokenizer()
    for task in ("reverse", "sort", "reverse_words"):
        for ex in examples(task, 40):
            assert len(tok.encode(ex["answer"])) == len(ex["answer"].split()), ex  # one token per item


def test_generation_is_deterministic_by_seed():
    a = list(T.iter_examples(60, "train", seed=3))
    assert a == list(T.iter_examples(60, "train", seed=3))
    assert a != list(T.iter_examples(60, "train", seed=4))
    assert [ex["task"] for ex in a[: len(T.TASKS)]] == list(T.TASKS)  # tasks in turn


def test_files_are_reproducible_and_held_out(tmp_path):
    counts = dict(sft=800, sft_val=120, dpo=300, dpo_val=80, eval_count=160, seed=7)
    manifest = T.write_task_files(tmp_path / "a", **counts)
    T.write_task_files(tmp_path / "b", **counts)
    names = ["sft_train.jsonl", "sft_val.jsonl", "dpo_train.jsonl", "dpo_val.jsonl", "eval.jsonl", "manifest.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    def load(name):
        return [json.loads(line) for line in (tmp_path / "a" / name).read_text().splitlines()]

    sft, sft_val = load("sft_train.jsonl"), load("sft_val.jsonl")
    dpo, dpo_val, ev = load("dpo_train.jsonl"), load("dpo_val.jsonl"), load("eval.jsonl")
    assert (len(sft), len(dpo)) == (800, 300) and len(ev) == 160 and 100 <= len(sft_val) <= 120
    assert manifest["files"]["eval.jsonl"]["records"] == len(ev)
    for r in sft + sft_val:
        assert list(r) == ["messages"] and [m["role"] for m in r["messages"]] == ["user", "assistant"]
    for r in dpo + dpo_val:
        assert list(r) == ["prompt", "chosen", "rejected"] and r["chosen"] != r["rejected"]
    train_prompts = {r["messages"][0]["content"] for r in sft} | {r["prompt"] for r in dpo}
    val_prompts = {r["messages"][0]["content"] for r in sft_val} | {r["prompt"] for r in dpo_val}
    eval_prompts = [r["prompt"] for r in ev]
    assert len(set(eval_prompts)) == len(eval_prompts)  # each eval prompt once
    assert not train_prompts & set(eval_prompts) and not train_prompts & val_prompts and not val_prompts & set(eval_prompts)
    assert {T.split_of(p) for p in train_prompts} == {"train"}
    for r in ev:  # the eval file grades itself
        assert T.is_correct(r["task"], r, r["answer"])
    assert T.load_eval(tmp_path / "a" / "eval.jsonl") == ev


def test_a_split_that_runs_out_stops_that_task_only():
    got = list(T.iter_examples(2000, "eval", seed=0, tasks=["python", "length"], unique=True))
    per_task = {t: sum(ex["task"] == t for ex in got) for t in ("python", "length")}
    assert 10 < per_task["python"] < 120  # a few hundred Python prompts in all, a tenth of them held out for eval
    assert per_task["length"] == 2000 - per_task["python"]
    with pytest.raises(ValueError, match="unknown tasks"):
        list(T.iter_examples(3, "train", tasks=["juggle"]))


def test_cli_writes_the_files(tmp_path, capsys):
    rc = T.main(["--out", str(tmp_path), "--sft", "40", "--sft-val", "8", "--dpo", "16", "--dpo-val", "8", "--eval", "16",
                 "--tasks", "sort,count"])  # fmt: skip
    assert rc == 0
    ev = T.load_eval(tmp_path / "eval.jsonl")
    assert len(ev) == 16 and {r["task"] for r in ev} == {"sort", "count"}
    assert "eval.jsonl: 16 records" in capsys.readouterr().out


def test_bad_records_name_the_file_and_line(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"task": "sort", "prompt": "Sort the list: 2 1", "answer": "1 2"}\n{"task": "sort"\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: not valid JSON"):
        T.load_eval(path)
    path.write_text('{"task": "sort", "prompt": "p"}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:1: the record has no 'answer'"):
        T.load_eval(path)
