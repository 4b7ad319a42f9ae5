"""Graded tests of stage 4: the learning-rate schedule (exercises/stage4_training/schedule.py).

``lr_at`` is checked against a reference written here from the definition
(linear warm-up from max_lr / warmup_steps at step 0 to max_lr at step
warmup_steps - 1, a cosine from max_lr at step warmup_steps to min_lr at step
max_steps, min_lr after), at every step of short schedules and at the
boundaries of a long one: 0, warmup_steps - 1, warmup_steps, max_steps - 1,
max_steps and beyond. Without warm-up, step 0 has max_lr.

A wrong schedule is compared with the usual mistakes (warm-up starting at 0,
warm-up one step too long, the cosine over steps 0..max_steps instead of
warmup_steps..max_steps, a cosine to 0 instead of min_lr, a cosine that rises
again after max_steps, a linear decay) and the failure names the one it matches.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage4_training/schedule"

schedule_exercise = pytest.mark.exercise("lr_at", stage=4, points=2, title="Learning rate: linear warm-up, cosine decay")


def reference(step, max_lr, min_lr, warmup_steps, max_steps, *, warm="step+1", decay_from="warmup", floor="min_lr", after="min_lr",
              shape="cosine", warm_le=False):  # fmt: skip
    """The lr of ``step``; the keyword arguments make the usual wrong variants."""
    in_warmup = (step <= warmup_steps if warm_le else step < warmup_steps) and warmup_steps > 0
    if in_warmup:
        return max_lr * {"step+1": step + 1, "step": step}[warm] / warmup_steps
    if step >= max_steps and after == "min_lr":
        return min_lr
    start = warmup_steps if decay_from == "warmup" else 0
    p = (step - start) / (max_steps - start)
    low = min_lr if floor == "min_lr" else 0.0
    f = 0.5 * (1.0 + math.cos(math.pi * p)) if shape == "cosine" else 1.0 - p
    return low + (max_lr - low) * f


MISTAKES = [
    (dict(warm="step"), "the warm-up starts at 0: step 0 must already take max_lr * 1 / warmup_steps (lr = max_lr * (step + 1) / "
                        "warmup_steps), so that step warmup_steps - 1 reaches max_lr."),
    (dict(warm_le=True), "the warm-up lasts one step too long: it covers the steps < warmup_steps; step warmup_steps is the first "
                         "step of the cosine, with max_lr."),
    (dict(decay_from="zero"), "the cosine runs over steps 0..max_steps: it must start at the end of the warm-up, "
                              "p = (step - warmup_steps) / (max_steps - warmup_steps), so that step warmup_steps has max_lr."),
    (dict(floor="zero"), "the cosine decays to 0 instead of min_lr: lr = min_lr + (max_lr - min_lr) * (1 + cos(pi p)) / 2."),
    (dict(after="cosine"), "after max_steps the cosine rises again: from step max_steps on the lr is min_lr."),
    (dict(shape="linear"), "the decay is linear: use the cosine, min_lr + (max_lr - min_lr) * (1 + cos(pi p)) / 2."),
]


def check(fn, steps, max_lr, min_lr, warmup_steps, max_steps):
    setting = dict(max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps)
    got = []
    for s in steps:
        v = fn(s, **setting)
        assert isinstance(v, (float, int)) and not isinstance(v, bool), f"lr_at must return a Python float, got {type(v).__name__}."
        got.append(float(v))
    got = torch.tensor(got, dtype=torch.float64)
    expected = torch.tensor([reference(s, **setting) for s in steps], dtype=torch.float64)
    candidates = [(lambda kw=kw: torch.tensor([reference(s, **setting, **kw) for s in steps], dtype=torch.float64), sentence)
                  for kw, sentence in MISTAKES]  # fmt: skip
    hint = which_mistake(got, expected, candidates, atol=1e-12, rtol=1e-9)
    bad = [(s, g, e) for s, g, e in zip(steps, got.tolist(), expected.tolist()) if abs(g - e) > 1e-12 + 1e-9 * abs(e)]
    where = f"at step {bad[0][0]}: got {bad[0][1]:.6g}, expected {bad[0][2]:.6g}" if bad else ""
    assert_close(got, expected, atol=1e-12, rtol=1e-9, what=f"the lr at steps {steps[0]}..{steps[-1]}",
                 hint=hint or f"the learning rate differs from the schedule {where} ({setting}).")  # fmt: skip


@schedule_exercise
@pytest.mark.parametrize("warmup_steps,max_steps", [(5, 20), (1, 7), (10, 11), (3, 4)])
def test_every_step_of_a_short_schedule(impl, rng, warmup_steps, max_steps):
    fn = impl.load(TOPIC).lr_at
    max_lr = float(1e-3 * (1 + torch.rand((), generator=rng)))
    min_lr = max_lr * float(0.05 + 0.2 * torch.rand((), generator=rng))
    check(fn, list(range(max_steps + 4)), max_lr, min_lr, warmup_steps, max_steps)


@schedule_exercise
def test_the_boundaries_of_a_long_schedule(impl, rng):
    fn = impl.load(TOPIC).lr_at
    w, n = 700, 19_073  # GPT-2 124M on 10B tokens
    steps = [0, 1, w // 2, w - 1, w, w + 1, (w + n) // 2, n - 1, n, n + 1, 2 * n]
    check(fn, steps, 6e-4, 6e-5, w, n)


@schedule_exercise
def test_exact_values_by_hand(impl, rng):
    """warmup 4, max_steps 12, max_lr 1, min_lr 0.1: steps 0..3 give 0.25, 0.5, 0.75, 1; step 8 (half-way) 0.55; 12 and 13 give 0.1."""
    fn = impl.load(TOPIC).lr_at
    check(fn, [0, 1, 2, 3, 4, 8, 12, 13], 1.0, 0.1, 4, 12)
    for step, value in ((0, 0.25), (3, 1.0), (4, 1.0), (8, 0.55), (12, 0.1)):
        assert abs(fn(step, max_lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=12) - value) < 1e-12


@schedule_exercise
def test_without_warmup(impl, rng):
    """warmup_steps = 0: no warm-up at all, step 0 has max_lr and the cosine starts there."""
    fn = impl.load(TOPIC).lr_at
    check(fn, list(range(12)), 3e-4, 3e-5, 0, 10)
