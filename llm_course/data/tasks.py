"""The course's own small, verifiable tasks: instruction data for SFT, preference pairs for DPO, held-out eval.

    python -m llm_course.data.tasks --out runs/tasks            # sft_*.jsonl, dpo_*.jsonl, eval.jsonl
    python -m llm_course.data.tasks --out runs/tasks --sft 2000 --dpo 500 --eval 200 --seed 1

Fine-tuning is only convincing when its effect can be *measured*. So instead of downloading
a chat data set, the course generates tasks that a small model pretrained on Python code
can learn, and that a program can grade exactly:

==================  =====================================  ============
task                prompt (the user's message)            answer
==================  =====================================  ============
``reverse``         ``Reverse the list: 4 9 1 7``          ``7 1 9 4``
``sort``            ``Sort the list: 5 2 9 2``             ``2 2 5 9``
``length``          ``How many items: 3 8 1 4``            ``4``
``count``           ``How many times is 3 in: 3 1 3 5``    ``2``
``max``             ``Largest of: 3 8 2``                  ``8``
``min``             ``Smallest of: 3 8 2``                 ``2``
``reverse_words``   ``Reverse the words: key map set``     ``set map key``
``python``          ``Complete the code:``                 ``a + b``
                    ``def add(a, b):``
                    ``    return``
==================  =====================================  ============

Every answer has one short, fixed format, and the vocabulary is what the course tokenizer
encodes compactly: single digits (`` 7`` is one token) and short identifiers (`` key``,
`` map``: one token each).

**Verifiable.** :func:`is_correct` grades a model's completion: the text up to
``<|im_end|>``, whitespace normalized (``"7 1  9 4 "`` is ``"7 1 9 4"``; in Python code
spaces do not count at all, ``a+b`` is ``a + b``), compared with the answer.

**Preference pairs.** For DPO, ``chosen`` is the correct answer and ``rejected`` a
*plausible* wrong one, the kind of mistake a model makes: a list not fully reversed or
sorted (two neighbours swapped, an item dropped, the input given back), a count off by
one, the second largest instead of the largest, ``a - b`` for ``add``.

**Held out.** Each prompt belongs to one split for good: a hash of its text puts it in
``train`` (80 %), ``val`` (10 %) or ``eval`` (10 %) (:func:`split_of`). Training files draw
only ``train`` prompts, so no ``val`` or ``eval`` prompt is ever trained on, whatever the
seed and the counts. ``val`` and ``eval`` hold each prompt once.

**Deterministic.** The same seed and counts give the same files, byte for byte, on every
machine (``random.Random`` seeded with a string, not Python's salted ``hash``).

Files (JSON Lines):

* ``sft_train.jsonl``, ``sft_val.jsonl``: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``;
* ``dpo_train.jsonl``, ``dpo_val.jsonl``: ``{"prompt": str, "chosen": str, "rejected": str}``;
* ``eval.jsonl``: ``{"task": str, "prompt": str, "answer": str, "meta": {...the inputs}}``;
* ``manifest.json``: the seed, and how many records of each task each file holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

IM_END = "<|im_end|>"
END_MARKERS = (IM_END, "<|endoftext|>", "<|im_start|>")  # a completion ends at the first of these
SPLITS = ("train", "val", "eval")
DIGITS = list(range(10))
# Short identifiers, each one token of the course tokenizer, alone and after a space.
WORDS = ("key map set list int str file line name data text path item node tree word code type "
         "size self test dict view pair char byte port host user time date year day").split()  # fmt: skip


# --- the tasks ------------------------------------------------------------------------------------


def _items(rng: random.Random, lo: int, hi: int) -> list[int]:
    """A list of lo..hi random digits."""
    return [rng.choice(DIGITS) for _ in range(rng.randint(lo, hi))]


def _join(xs: Iterable) -> str:
    return " ".join(str(x) for x in xs)


def _swap_one(xs: list, rng: random.Random) -> list | None:
    """``xs`` with one pair of *different* neighbours swapped; None when all neighbours are equal."""
    spots = [i for i in range(len(xs) - 1) if xs[i] != xs[i + 1]]
    if not spots:
        return None
    i = rng.choice(spots)
    out = list(xs)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _drop_one(xs: list, rng: random.Random) -> list:
    i = rng.randrange(len(xs))
    return xs[:i] + xs[i + 1 :]


def _pick_wrong(task: str, answer: str, candidates: list, rng: random.Random) -> str:
    """One candidate (a list or a str) that differs from ``answer``, chosen at random."""
    texts = [c if isinstance(c, str) else _join(c) for c in candidates if c is not None]
    texts = sorted({t for t in texts if normalize(task, t) != normalize(task, answer)})
    if not texts:
        raise AssertionError(f"no wrong answer differs from {answer!r}")  # cannot happen: a drop always differs
    return rng.choice(texts)


def _reverse(rng):
    xs = _items(rng, 3, 7)
    return f"Reverse the list: {_join(xs)}", _join(xs[::-1]), {"items": xs}


def _reverse_wrong(meta, rng):
    out = meta["items"][::-1]
    return [meta["items"], _swap_one(out, rng), _drop_one(out, rng)]


def _sort(rng):
    xs = _items(rng, 3, 7)
    while len(set(xs)) < 2:  # at least two values, so that a wrong order exists
        xs = _items(rng, 3, 7)
    return f"Sort the list: {_join(xs)}", _join(sorted(xs)), {"items": xs}


def _sort_wrong(meta, rng):
    out = sorted(meta["items"])
    return [meta["items"], _swap_one(out, rng), _drop_one(out, rng), out[::-1]]


def _length(rng):
    xs = _items(rng, 1, 9)
    return f"How many items: {_join(xs)}", str(len(xs)), {"items": xs}


def _length_wrong(meta, rng):
    n = len(meta["items"])
    return [str(n + 1)] + ([str(n - 1)] if n > 1 else [])


def _count(rng):
    xs = _items(rng, 3, 9)
    target = rng.choice(xs) if rng.random() < 0.8 else rng.choice(DIGITS)  # mostly present, sometimes 0 times
    return f"How many times is {target} in: {_join(xs)}", str(xs.count(target)), {"items": xs, "target": target}


def _count_wrong(meta, rng):
    c = meta["items"].count(meta["target"])
    return [str(c + 1)] + ([str(c - 1)] if c > 0 else [])


def _distinct(rng, lo, hi):
    xs = _items(rng, lo, hi)
    while len(set(xs)) < 2:
        xs = _items(rng, lo, hi)
    return xs


def _max(rng):
    xs = _distinct(rng, 2, 7)
    return f"Largest of: {_join(xs)}", str(max(xs)), {"items": xs}


def _max_wrong(meta, rng):
    xs = meta["items"]
    return [str(sorted(set(xs))[-2]), str(min(xs)), str(xs[0])]


def _min(rng):
    xs = _distinct(rng, 2, 7)
    return f"Smallest of: {_join(xs)}", str(min(xs)), {"items": xs}


def _min_wrong(meta, rng):
    xs = meta["items"]
    return [str(sorted(set(xs))[1]), str(max(xs)), str(xs[0])]


def _reverse_words(rng):
    ws = rng.sample(WORDS, rng.randint(2, 5))
    return f"Reverse the words: {_join(ws)}", _join(ws[::-1]), {"words": ws}


def _reverse_words_wrong(meta, rng):
    out = meta["words"][::-1]
    return [meta["words"], _swap_one(out, rng), _drop_one(out, rng)]


# Python one-liners: a function's name says what it returns. name -> (body, a plausible wrong body)
BINARY_OPS = {
    "add": ("{a} + {b}", "{a} - {b}"),
    "subtract": ("{a} - {b}", "{b} - {a}"),
    "multiply": ("{a} * {b}", "{a} + {b}"),
    "divide": ("{a} / {b}", "{b} / {a}"),
    "floor_divide": ("{a} // {b}", "{a} / {b}"),
    "remainder": ("{a} % {b}", "{b} % {a}"),
    "power": ("{a} ** {b}", "{a} * {b}"),
    "maximum": ("max({a}, {b})", "min({a}, {b})"),
    "minimum": ("min({a}, {b})", "max({a}, {b})"),
    "equal": ("{a} == {b}", "{a} != {b}"),
    "less": ("{a} < {b}", "{a} > {b}"),
    "greater": ("{a} > {b}", "{a} < {b}"),
    "both": ("{a} and {b}", "{a} or {b}"),
    "either": ("{a} or {b}", "{a} and {b}"),
}
UNARY_OPS = {
    "negate": ("-{x}", "{x}"),
    "square": ("{x} * {x}", "{x} + {x}"),
    "double": ("2 * {x}", "{x} * {x}"),
    "half": ("{x} / 2", "{x} * 2"),
    "increment": ("{x} + 1", "{x} - 1"),
    "decrement": ("{x} - 1", "{x} + 1"),
    "absolute": ("abs({x})", "-{x}"),
    "is_even": ("{x} % 2 == 0", "{x} % 2 == 1"),
    "is_odd": ("{x} % 2 == 1", "{x} % 2 == 0"),
    "is_zero": ("{x} == 0", "{x} != 0"),
    "to_string": ("str({x})", "int({x})"),
}
SEQUENCE_OPS = {
    "first": ("{x}[0]", "{x}[1]"),
    "last": ("{x}[-1]", "{x}[0]"),
    "length": ("len({x})", "len({x}) - 1"),
    "total": ("sum({x})", "len({x})"),
    "largest": ("max({x})", "min({x})"),
    "smallest": ("min({x})", "max({x})"),
}
PAIR_NAMES = [("a", "b"), ("x", "y"), ("m", "n"), ("i", "j"), ("p", "q"), ("u", "v"), ("s", "t"),
              ("lhs", "rhs"), ("left", "right"), ("x1", "x2"), ("num1", "num2"), ("first", "second")]  # fmt: skip
NUMBER_NAMES = ["x", "n", "a", "v", "k", "value", "num", "number", "val", "count"]
SEQUENCE_NAMES = ["xs", "items", "values", "seq", "lst", "arr", "data", "nums"]


def _python(rng):
    kind = rng.choice(["binary", "binary", "unary", "sequence"])
    if kind == "binary":
        name = rng.choice(sorted(BINARY_OPS))
        a, b = rng.choice(PAIR_NAMES)
        a, b = (b, a) if rng.random() < 0.5 else (a, b)
        args, fields = f"{a}, {b}", {"a": a, "b": b}
        body, _ = BINARY_OPS[name]
    else:
        table, names = (UNARY_OPS, NUMBER_NAMES) if kind == "unary" else (SEQUENCE_OPS, SEQUENCE_NAMES)
        name = rng.choice(sorted(table))
        x = rng.choice(names)
        args, fields = x, {"x": x}
        body, _ = table[name]
    prompt = f"Complete the code:\ndef {name}({args}):\n    return"
    return prompt, body.format(**fields), {"function": name, "args": fields}


def _python_wrong(meta, rng):
    name, fields = meta["function"], meta["args"]
    table = BINARY_OPS if name in BINARY_OPS else UNARY_OPS if name in UNARY_OPS else SEQUENCE_OPS
    return [table[name][1].format(**fields)]


@dataclass(frozen=True)
class Task:
    """One kind of task: ``make(rng) -> (prompt, answer, meta)`` and ``wrong(meta, rng) -> [candidates]``."""

    name: str
    make: Callable[[random.Random], tuple[str, str, dict]]
    wrong: Callable[[dict, random.Random], list]
    code: bool = False  # the answer is Python code: spaces do not count


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("reverse", _reverse, _reverse_wrong),
        Task("sort", _sort, _sort_wrong),
        Task("length", _length, _length_wrong),
        Task("count", _count, _count_wrong),
        Task("max", _max, _max_wrong),
        Task("min", _min, _min_wrong),
        Task("reverse_words", _reverse_words, _reverse_words_wrong),
        Task("python", _python, _python_wrong, code=True),
    ]
}


# --- grading --------------------------------------------------------------------------------------


def completion_text(completion: str) -> str:
    """The reply a completion holds: the text before the first ``<|im_end|>`` (or other marker), stripped."""
    cut = min([completion.find(m) for m in END_MARKERS if m in completion], default=len(completion))
    return completion[:cut].strip()


def normalize(task: str, text: str) -> str:
    """The form answers are compared in: whitespace runs made one space; for code, no whitespace at all."""
    code = task in TASKS and TASKS[task].code
    return "".join(text.split()) if code else " ".join(text.split())


def is_correct(task: str, meta: dict, completion: str) -> bool:
    """True when ``completion`` (a model's reply, maybe followed by ``<|im_end|>`` and more) is the answer.

    Args:
        task: the task's name (``"sort"``).
        meta: the eval record (or any dict) holding the true ``"answer"``.
        completion: the generated text.
    """
    if task not in TASKS:
        raise ValueError(f"is_correct: unknown task {task!r}; the tasks are {sorted(TASKS)}")
    if "answer" not in meta:
        raise ValueError(f"is_correct: the record of task {task!r} has no 'answer': {meta!r}")
    return normalize(task, completion_text(completion)) == normalize(task, meta["answer"])


# --- splits and sampling --------------------------------------------------------------------------


def split_of(prompt: str) -> str:
    """The split a prompt belongs to for good: "train" (80 %), "val" (10 %) or "eval" (10 %), from a hash of its text."""
    bucket = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "eval"


def sample_example(task: str, rng: random.Random) -> dict:
    """One example of ``task``: ``{"task", "prompt", "answer", "meta"}`` (meta: the inputs)."""
    prompt, answer, meta = TASKS[task].make(rng)
    return {"task": task, "prompt": prompt, "answer": answer, "meta": meta}


def wrong_answer(example: dict, rng: random.Random) -> str:
    """A plausible wrong answer to ``example`` (never equal to the answer, even up to whitespace)."""
    task = TASKS[example["task"]]
    return _pick_wrong(task.name, example["answer"], task.wrong(example["meta"], rng), rng)


def iter_examples(
    n: int, split: str, seed: int | str = 0, purpose: str = "sft", tasks: list[str] | None = None, unique: bool = False
) -> Iterator[dict]:
    """Up to ``n`` examples whose prompts belong to ``split``, the tasks taken in turn.

    ``purpose`` ("sft", "dpo", "eval") gives each file its own random stream. With ``unique``,
    no prompt comes twice; a task whose prompts of this split run out (the ``python`` task has
    a few hundred prompts in all) stops contributing, so fewer than ``n`` may come.
    """
    if split not in SPLITS:
        raise ValueError(f"iter_examples: split must be one of {SPLITS}, got {split!r}")
    names = list(tasks) if tasks is not None else list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"iter_examples: unknown tasks {unknown or names!r}; the tasks are {sorted(TASKS)}")
    rng = random.Random(f"llm-course tasks/{seed}/{split}/{purpose}")
    seen: set[str] = set()
    active = list(names)
    count, turn = 0, 0
    while count < n and active:
        name = active[turn % len(active)]
        for _ in range(400):  # about 1 in 10 draws lands in val or eval: 400 misses means the split ran out
            ex = sample_example(name, rng)
            if split_of(ex["prompt"]) == split and not (unique and ex["prompt"] in seen):
                break
        else:
            active.remove(name)
            continue
        seen.add(ex["prompt"])
        yield ex
        count += 1
        turn += 1


def sft_record(example: dict) -> dict:
    """A chat record: the prompt as the user's message, the answer as the assistant's."""
    return {"messages": [{"role": "user", "content": example["prompt"]}, {"role": "assistant", "content": example["answer"]}]}


def dpo_record(example: dict, rng: random.Random) -> dict:
    """A preference record: chosen = the answer, rejected = a plausible wrong answer."""
    return {"prompt": example["prompt"], "chosen": example["answer"], "rejected": wrong_answer(example, rng)}


# --- files ----------------------------------------------------------------------------------------


def _write(path: Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_task_files(
    out_dir: str | os.PathLike,
    *,
    sft: int = 20_000,
    sft_val: int = 1_000,
    dpo: int = 5_000,
    dpo_val: int = 500,
    eval_count: int = 500,
    seed: int = 0,
    tasks: list[str] | None = None,
) -> dict:
    """Write the five files (module docstring) and ``manifest.json`` into ``out_dir``; returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"seed": seed, "tasks": list(tasks or TASKS), "files": {}}

    def keep(name: str, examples: Iterable[dict], to_record) -> None:
        examples = list(examples)
        _write(out / name, (to_record(ex) for ex in examples))
        manifest["files"][name] = {"records": len(examples), "per_task": dict(Counter(ex["task"] for ex in examples))}

    train_wrong = random.Random(f"llm-course tasks/{seed}/train/rejected")
    val_wrong = random.Random(f"llm-course tasks/{seed}/val/rejected")
    keep("sft_train.jsonl", iter_examples(sft, "train", seed, "sft", tasks), sft_record)
    keep("sft_val.jsonl", iter_examples(sft_val, "val", seed, "sft", tasks, unique=True), sft_record)
    keep("dpo_train.jsonl", iter_examples(dpo, "train", seed, "dpo", tasks), lambda ex: dpo_record(ex, train_wrong))
    keep("dpo_val.jsonl", iter_examples(dpo_val, "val", seed, "dpo", tasks, unique=True), lambda ex: dpo_record(ex, val_wrong))
    keep("eval.jsonl", iter_examples(eval_count, "eval", seed, "eval", tasks, unique=True), lambda ex: ex)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_records(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict]:
    """The records of a JSON Lines file; a bad line is a ValueError naming the file and the line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            missing = [k for k in required if not isinstance(record, dict) or k not in record]
            if missing:
                raise ValueError(f"{path}:{number}: the record has no {', '.join(map(repr, missing))}")
            records.append(record)
    return records


def load_eval(path: str | os.PathLike) -> list[dict]:
    """The records of an ``eval.jsonl`` (``task``, ``prompt``, ``answer``), checked."""
    records = read_records(path, ("task", "prompt", "answer"))
    for number, r in enumerate(records, 1):
        if r["task"] not in TASKS:
            raise ValueError(f"{path}: record {number} has an unknown task {r['task']!r}; the tasks are {sorted(TASKS)}")
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm_course.data.tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="the folder to write the files into")
    p.add_argument("--sft", type=int, default=20_000, help="SFT training records (default 20000)")
    p.add_argument("--sft-val", type=int, default=1_000, help="SFT validation records (default 1000)")
    p.add_argument("--dpo", type=int, default=5_000, help="DPO training pairs (default 5000)")
    p.add_argument("--dpo-val", type=int, default=500, help="held-out DPO pairs (default 500)")
    p.add_argument("--eval", type=int, default=500, help="held-out eval prompts (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)}")
    args = p.parse_args(argv)
    counts = [args.sft, args.sft_val, args.dpo, args.dpo_val, args.eval]
    if any(c < 0 for c in counts):
        p.error("counts must be >= 0")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    try:
        manifest = write_task_files(args.out, sft=args.sft, sft_val=args.sft_val, dpo=args.dpo, dpo_val=args.dpo_val,
                                    eval_count=args.eval, seed=args.seed, tasks=tasks)  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, info in manifest["files"].items():
        print(f"{Path(args.out) / name}: {info['records']} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
