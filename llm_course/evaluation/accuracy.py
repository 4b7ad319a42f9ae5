"""Held-out task accuracy: does the model *answer*, not just lower a loss?

A loss curve says the model got better at predicting the training text. What we want
to know is whether it does the task: given a prompt it has never seen, is its reply
right? :func:`task_accuracy` measures exactly that:

1. each eval prompt becomes one user message, rendered with the chat template and the
   generation prompt (``<|im_start|>assistant\\n``), as a chat model sees it;
2. the model replies with greedy decoding (the most likely token each step: the same
   reply every time, so two models are compared on their best guess, not on luck),
   batched with left padding and the KV cache (``llm_course.generation.generate``),
   stopping at ``<|im_end|>``;
3. a program grades each reply (:func:`llm_course.data.tasks.is_correct`).

The result: the share of correct replies overall and per task, and a few sample rows
(prompt, reply, right or wrong) to *look at*: an accuracy of 0 from replies that are
almost right is not the same as from replies that are noise.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from llm_course.data.tasks import TASKS, is_correct
from llm_course.generation.generate import generate
from llm_course.tokenizer.batch import pad_batch

IM_END = "<|im_end|>"
EOS = "<|endoftext|>"


def render_prompt(tokenizer, prompt) -> list[int]:
    """The ids a chat model sees before its reply: ``prompt`` (a str = one user turn, or a list of
    messages) in the chat template, with the generation prompt."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return tokenizer.encode(text)


def stop_ids(tokenizer) -> list[int]:
    """The ids that end a reply: ``<|im_end|>`` (ChatML), and ``<|endoftext|>``."""
    ids = [tokenizer.token_to_id(t) for t in (IM_END, EOS)]
    ids = [i for i in ids if i is not None]
    if not ids:
        raise ValueError(f"the tokenizer has neither {IM_END} nor {EOS}: it cannot end a chat reply")
    return ids


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def generate_replies(
    model, tokenizer, prompts: list, *, max_new_tokens: int = 32, batch_size: int = 32, device=None
) -> list[str]:
    """Greedy replies to ``prompts`` (each a str or a list of messages), in their order, without the stop token.

    Prompts are sorted by length and batched (less padding), then put back in order.
    """
    if not prompts:
        return []
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"generate_replies: batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    device = torch.device(device) if device is not None else _model_device(model)
    stops = stop_ids(tokenizer)
    pad = tokenizer.token_to_id(EOS) if tokenizer.token_to_id(EOS) is not None else stops[0]
    block_size = getattr(model.config, "block_size", None)
    encoded = [render_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    replies: list[str] = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_batch([encoded[i] for i in rows], pad_id=pad, padding_side="left")  # (B, T) each
        T = ids.shape[1]
        n = max_new_tokens if block_size is None else min(max_new_tokens, block_size - T)
        if n < 1:
            raise ValueError(f"task_accuracy: a prompt of {T} tokens leaves no room in the model's block_size={block_size}")
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens=n,
                       eos_token_id=stops, pad_token_id=pad)  # (B, T + n), greedy  # fmt: skip
        for b, i in enumerate(rows):
            new = out[b, T:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))  # up to the first stop token
            replies[i] = tokenizer.decode(new[:cut])
    return replies


def task_accuracy(
    model,
    tokenizer,
    eval_records: list[dict],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    device=None,
    *,
    n_samples: int = 8,
    keep_rows: bool = False,
) -> dict:
    """Greedy replies to held-out prompts, graded; accuracy overall and per task.

    Args:
        model: a course causal LM, on ``device`` (default: where its parameters are).
        tokenizer: the course tokenizer or a model folder's (``encode``, ``decode``,
            ``token_to_id``, ``apply_chat_template``).
        eval_records: ``{"task", "prompt", "answer", ...}`` dicts (``llm_course.data.tasks.load_eval``).
        max_new_tokens: the longest reply (every task's answer is far shorter).
        batch_size: prompts generated together.
        n_samples: how many sample rows to return: the first record of each task, then the next ones.
        keep_rows: also return every row (``"rows"``).
    Returns:
        ``{"accuracy", "correct", "total", "per_task": {task: {"accuracy", "correct", "total"}},
        "samples": [{"task", "prompt", "answer", "completion", "correct"}, ...]}`` (+ ``"rows"``).
    """
    for i, r in enumerate(eval_records):
        if not isinstance(r, dict) or not {"task", "prompt", "answer"} <= r.keys() or r["task"] not in TASKS:
            raise ValueError(f"task_accuracy: eval record {i} needs a known 'task', a 'prompt' and an 'answer', got {r!r}")
    replies = generate_replies(model, tokenizer, [r["prompt"] for r in eval_records],
                               max_new_tokens=max_new_tokens, batch_size=batch_size, device=device)  # fmt: skip
    rows = [
        {"task": r["task"], "prompt": r["prompt"], "answer": r["answer"], "completion": c, "correct": is_correct(r["task"], r, c)}
        for r, c in zip(eval_records, replies)
    ]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # task -> [correct, total]
    for row in rows:
        counts[row["task"]][0] += row["correct"]
        counts[row["task"]][1] += 1
    per_task = {t: {"accuracy": c / n, "correct": c, "total": n} for t, (c, n) in counts.items()}
    correct = sum(row["correct"] for row in rows)
    result = {
        "accuracy": correct / len(rows) if rows else 0.0,
        "correct": correct,
        "total": len(rows),
        "per_task": per_task,
        "samples": _samples(rows, n_samples),
    }
    if keep_rows:
        result["rows"] = rows
    return result


def _samples(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` rows: the first of each task first (every task shows up), then the following rows."""
    firsts = {}
    for i, row in enumerate(rows):
        firsts.setdefault(row["task"], i)
    picked = list(firsts.values())[:n]
    picked += [i for i in range(len(rows)) if i not in set(picked)][: max(0, n - len(picked))]
    return [rows[i] for i in sorted(picked)]
