"""Graded tests of stage 5: DPO's reward accuracy (exercises/stage5_finetune/dpo_loss.py).

Random log-probs, with some pairs tied exactly (policy = reference on both replies, so both
rewards are 0) and some where the policy alone prefers the other reply than the rewards do.
A wrong answer is compared with the usual mistakes: ties counted as wins, the policy's
log-probs compared without the reference, a count instead of a fraction, the comparison reversed.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage5_finetune/dpo_loss"

accuracy_exercise = pytest.mark.exercise("reward_accuracy", stage=5, points=1, title="DPO reward accuracy")


def make(rng, P=40):
    pc, pr, rc, rr = (torch.randn(P, generator=rng, dtype=torch.float64) * 3 - 20 for _ in range(4))
    tie = torch.rand(P, generator=rng) < 0.25
    rc[tie], rr[tie] = pc[tie], pr[tie]  # both rewards exactly 0
    return pc, pr, rc, rr


def mistakes(pc, pr, rc, rr):
    cw, cl = pc - rc, pr - rr
    return [
        (lambda: (cw >= cl).double().mean(), "ties are counted as wins: a pair counts only when the chosen reward is strictly "
                                             "larger (at the start every reward is 0 and the accuracy must be 0)."),
        (lambda: (pc > pr).double().mean(), "the policy's log-probs are compared without the reference: the reward is "
                                            "policy log-prob minus reference log-prob."),
        (lambda: (cw > cl).double().sum(), "this is the number of pairs won: divide by the number of pairs."),
        (lambda: (cw < cl).double().mean(), "the comparison is reversed: count the pairs where the chosen reward is larger."),
    ]  # fmt: skip


@accuracy_exercise
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_rewards(impl, rng, dtype):
    fn = impl.load(TOPIC).reward_accuracy
    pc, pr, rc, rr = make(rng)
    got = fn(*(t.to(dtype) for t in (pc, pr, rc, rr)))
    assert isinstance(got, torch.Tensor) and got.dim() == 0, "reward_accuracy should return a 0-d tensor"
    assert got.is_floating_point(), f"reward_accuracy should return a float tensor (a fraction), got {got.dtype}"
    a, b, c, d = (t.to(dtype).double() for t in (pc, pr, rc, rr))
    expected = ((a - c) > (b - d)).double().mean()
    hint = which_mistake(got, expected, mistakes(a, b, c, d), atol=1e-6, rtol=0)
    assert_close(got.double(), expected, atol=1e-6, rtol=0, what="the reward accuracy", hint=hint or "the reward accuracy is wrong.")


@accuracy_exercise
def test_policy_equal_to_reference_wins_nothing(impl, rng):
    pc, pr, _, _ = make(rng, P=8)
    got = impl.load(TOPIC).reward_accuracy(pc, pr, pc.clone(), pr.clone())
    assert float(got) == 0.0, ("with the policy equal to the reference every reward is 0: no pair is won (ties are not "
                               f"wins), so the accuracy is 0, got {float(got)}")  # fmt: skip
