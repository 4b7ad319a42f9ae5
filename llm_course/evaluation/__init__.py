"""Measuring what fine-tuning changed: held-out task accuracy and preference accuracy (stage 5).

    from llm_course.evaluation import task_accuracy, preference_accuracy
    from llm_course.data.tasks import load_eval, read_records

    acc = task_accuracy(model, tokenizer, load_eval("runs/tasks/eval.jsonl"))
    acc["accuracy"], acc["per_task"]["sort"]["accuracy"], acc["samples"][0]
    pref = preference_accuracy(model, ref_model, read_records("runs/tasks/dpo_val.jsonl"), beta=0.1, tokenizer=tokenizer)

* ``accuracy``   -- :func:`task_accuracy`: greedy replies to held-out prompts, graded by a program;
* ``preference`` -- :func:`preference_accuracy`: how often DPO's implicit reward prefers the chosen reply;
* ``cli``        -- ``python -m llm_course.evaluation --model PATH --eval eval.jsonl --out result.json``.
"""

from llm_course.evaluation.accuracy import render_prompt, task_accuracy
from llm_course.evaluation.preference import preference_accuracy, response_logprobs

__all__ = ["preference_accuracy", "render_prompt", "response_logprobs", "task_accuracy"]
