"""Graded tests of stage 5: the DPO loss (exercises/stage5_finetune/dpo_loss.py).

Random summed log-probs of P pairs, in float64 and float32. The loss is compared with
``log(1 + exp(-z))`` per pair (z = beta * ((pc - rc) - (pr - rr))), averaged; the gradients
with respect to the policy's log-probs with their closed form; no gradient may reach the
reference's log-probs; margins of +-300 must give a finite loss (about 300 for a badly lost
pair). A wrong loss is compared with the usual mistakes, each computed here: the sign
flipped, the reference ignored or added, beta applied to one side only, a sum instead of a
mean, the log of a difference of sigmoids, log(sigmoid) that overflows to inf.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage5_finetune/dpo_loss"

dpo_exercise = pytest.mark.exercise("dpo_loss", stage=5, points=3, title="The DPO loss")


def inputs(rng, P=7, dtype=torch.float64, scale=5.0):
    return [(torch.randn(P, generator=rng, dtype=torch.float64) * scale - 20).to(dtype).requires_grad_(True) for _ in range(4)]


def expected_loss(pc, pr, rc, rr, beta):
    z = beta * ((pc.double() - rc.double()) - (pr.double() - rr.double()))
    return torch.nn.functional.softplus(-z).mean()  # log(1 + exp(-z)), exact for any z


def mistakes(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (t.detach().double() for t in (pc, pr, rc, rr))
    z = beta * ((pc - rc) - (pr - rr))
    return [
        (lambda: F.softplus(z).mean(), "the sign is flipped: the loss must fall when the chosen reply's reward rises above "
                                       "the rejected one's, -logsigmoid(r_chosen - r_rejected)."),
        (lambda: -F.logsigmoid(-z).mean(), "the sign is flipped: use -logsigmoid(r_chosen - r_rejected), not of r_rejected - r_chosen."),
        (lambda: F.logsigmoid(z).mean(), "the minus sign is missing: the loss is -logsigmoid(...), a positive number."),
        (lambda: F.softplus(-beta * (pc - pr)).mean(), "the reference is ignored: each reward is beta * (policy log-prob - "
                                                       "reference log-prob)."),
        (lambda: F.softplus(-beta * ((pc + rc) - (pr + rr))).mean(), "the reference log-probs are added: subtract them."),
        (lambda: F.softplus(-(beta * (pc - rc) - (pr - rr))).mean(), "beta scales the chosen reward only: it multiplies both."),
        (lambda: F.softplus(-((pc - rc) - beta * (pr - rr))).mean(), "beta scales the rejected reward only: it multiplies both."),
        (lambda: F.softplus(-((pc - rc) - (pr - rr))).mean(), "beta is missing: the rewards are beta * (policy - reference)."),
        (lambda: F.softplus(-z).sum(), "this is the sum over the pairs: take the mean."),
        (lambda: -torch.log(torch.sigmoid(beta * (pc - rc)) - torch.sigmoid(beta * (pr - rr))).mean(),
         "this is the log of a difference of sigmoids: the loss is -logsigmoid of the difference of the rewards."),
    ]  # fmt: skip


def check(fn, pc, pr, rc, rr, beta, tol):
    loss = fn(pc, pr, rc, rr, beta)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "dpo_loss should return a 0-d tensor (the mean over the pairs)"
    expected = expected_loss(pc, pr, rc, rr, beta)
    hint = which_mistake(loss, expected, mistakes(pc, pr, rc, rr, beta), **tol)
    assert_close(loss.double(), expected, **tol, what="the loss", hint=hint or "the DPO loss is wrong.")
    return loss


@dpo_exercise
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_and_gradients(impl, rng, beta, dtype):
    fn = impl.load(TOPIC).dpo_loss
    pc, pr, rc, rr = inputs(rng, dtype=dtype)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    loss = check(fn, pc, pr, rc, rr, beta, tol)
    loss.backward()
    for name, t in (("ref_chosen_logps", rc), ("ref_rejected_logps", rr)):
        assert t.grad is None or not t.grad.any(), (
            f"a gradient flows into {name}: the reference is not detached. Use ref_..._logps.detach() in the rewards "
            "(the reference only measures; training must not move it).")
    z = beta * ((pc - rc) - (pr - rr)).detach().double()
    grad = beta * torch.sigmoid(-z) / len(z)  # d loss / d policy_rejected; minus it for policy_chosen
    assert_close(pc.grad.double(), -grad, **tol, what="the gradient of policy_chosen_logps", hint="the loss's gradient is wrong.")
    assert_close(pr.grad.double(), grad, **tol, what="the gradient of policy_rejected_logps", hint="the loss's gradient is wrong.")


@dpo_exercise
def test_starts_at_log_2(impl, rng):
    fn = impl.load(TOPIC).dpo_loss
    pc, pr, _, _ = inputs(rng)
    loss = fn(pc, pr, pc.detach().clone(), pr.detach().clone(), 0.1)
    assert abs(float(loss.detach()) - 0.6931471805599453) < 1e-9, (
        f"with the policy equal to the reference every reward is 0 and the loss is log 2 = 0.6931, got {float(loss.detach()):.6f}")


@dpo_exercise
def test_large_margins_stay_finite(impl, rng):
    fn = impl.load(TOPIC).dpo_loss
    pc, pr, rc, rr = inputs(rng, P=4, dtype=torch.float32)
    with torch.no_grad():  # margins of -300 (a pair badly lost) and +300 (won) in float32
        rc.copy_(pc.detach())
        rr.copy_(pr.detach() + torch.tensor([300.0, -300.0, 300.0, -300.0]))
    loss = fn(pc, pr, rc, rr, 1.0)
    expected = expected_loss(pc, pr, rc, rr, 1.0)
    assert torch.isfinite(loss), ("the loss is inf for a large margin: log(sigmoid(z)) rounds sigmoid to 0 first. "
                                  "Use torch.nn.functional.logsigmoid(z), exact for any z.")  # fmt: skip
    assert_close(loss.double(), expected, atol=1e-3, rtol=1e-5, what="the loss at large margins",
                 hint="the loss is wrong at large margins (about 300 for a pair lost by 300, 0 for one won by 300).")  # fmt: skip
