"""The learning-rate schedule: linear warm-up, then a cosine decay to ``min_lr``.

    lr(step) = lr * (step + 1) / warmup_steps                       step <  warmup_steps
             = min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2        warmup <= step < decay_steps
               with p = (step - warmup_steps) / (decay_steps - warmup_steps)
             = min_lr                                               step >= decay_steps

Warm-up: AdamW's second-moment estimates are noisy during the first steps, and a full
learning rate then can throw the weights far off; ramping up avoids it. Cosine: large
steps while the loss falls fast, small ones at the end to settle into a minimum.

It is a pure function of the step (no state to save): a resumed run computes the same lr.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, warmup_steps: int, decay_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)  # 0 -> 1
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_for(cfg, step: int) -> float:
    """``lr_at`` with the numbers of a :class:`~llm_course.training.config.TrainConfig`."""
    s = cfg.schedule
    decay = s.decay_steps if s.decay_steps is not None else cfg.max_steps
    return lr_at(step, lr=cfg.optimizer.lr, warmup_steps=s.warmup_steps, decay_steps=decay, min_lr=s.min_lr)
