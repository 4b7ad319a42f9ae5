"""Stage 4 exercise: the learning-rate schedule, linear warm-up then cosine decay (exercise lr_at).

GPT-2, GPT-3, Llama and nanoGPT all train with the same shape of schedule:

    lr(step) = max_lr * (step + 1) / warmup_steps                           step < warmup_steps
             = min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2            warmup_steps <= step < max_steps
               with p = (step - warmup_steps) / (max_steps - warmup_steps)   (0 -> 1)
             = min_lr                                                        step >= max_steps

Steps count from 0 (the first optimizer step is step 0).

* **Warm-up**: at the start AdamW's second-moment estimates are built from a few
  noisy gradients, and a full learning rate can throw the weights far off. The
  lr rises linearly, step 0 already taking max_lr / warmup_steps (not 0: a step
  with lr 0 is a wasted step) and step warmup_steps - 1 reaching max_lr.
* **Cosine decay**: over the *remaining* steps, from max_lr at step warmup_steps
  (p = 0) down to min_lr at step max_steps (p = 1): large steps while the loss
  falls fast, small ones at the end to settle.
* **After max_steps** (a run continued past its plan): min_lr, not a cosine that
  rises again.

The schedule is a pure function of the step: a resumed run computes the same lr
with no state to save. The course's trainer uses ``llm_course/training/schedule.py``.
Check your work with ``.venv/bin/llm-course grade 4``.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based), as a Python float.

    Args:
        step: the optimizer step, >= 0 (may be past max_steps).
        max_lr: the peak learning rate, reached at step warmup_steps - 1 and warmup_steps.
        min_lr: the learning rate at step max_steps and after (0 <= min_lr <= max_lr).
        warmup_steps: the number of warm-up steps, >= 0 (0: no warm-up, step 0 has max_lr).
        max_steps: the step where the cosine reaches min_lr (> warmup_steps).

    Hint: three cases, tested in this order: ``step < warmup_steps``,
    ``step >= max_steps``, and the cosine in between. The tests check the steps
    at each boundary: 0, warmup_steps - 1, warmup_steps, max_steps - 1, max_steps.
    """
    # BEGIN EXERCISE lr_at
    # stub raises: "lr_at: max_lr * (step + 1) / warmup_steps during warm-up; min_lr from max_steps on; in between a cosine from max_lr to min_lr over p = (step - warmup_steps) / (max_steps - warmup_steps)"
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    p = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 at the end of warm-up, -> 1 at max_steps
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    # END EXERCISE lr_at
