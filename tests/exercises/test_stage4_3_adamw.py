"""Graded tests of stage 4: one step of AdamW (exercises/stage4_training/adamw.py).

``adamw_step`` is run for several steps on a few parameters of different shapes,
with new random gradients each step (some elements with tiny gradients, where
eps matters, some with large ones), and after every step the parameters and
both running averages are compared with ``torch.optim.AdamW`` (foreach=False)
run on copies, in float64 and in float32. The updates must happen in place and
leave the gradients unchanged.

A wrong update is compared with the usual mistakes, each written here as a
variant of the update (no bias correction, weight decay added to the gradient
as in Adam's L2 instead of decoupled on the weights, weight decay not scaled by
lr, eps inside the square root, the bias corrections counted from step 0), and
the failure names the one it matches.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage4_training/adamw"

adamw_exercise = pytest.mark.exercise("adamw_step", stage=4, points=2, title="AdamW: bias correction, decoupled weight decay")

SHAPES = [(7, 5), (5,), (3, 2, 4)]

MISTAKES = [
    (dict(bias_correction=False), "there is no bias correction: divide m by 1 - beta1**step and v by 1 - beta2**step (m and v start at 0, "
                                  "so early on they are too small)."),
    (dict(decay="l2"), "the weight decay is added to the gradient (Adam's L2): AdamW decays the weights directly, p *= 1 - lr * "
                       "weight_decay, and the Adam update uses the gradient alone."),
    (dict(decay="no lr"), "the weight decay is not scaled by lr: p *= 1 - lr * weight_decay."),
    (dict(decay="none"), "there is no weight decay: multiply the weights by 1 - lr * weight_decay before the update."),
    (dict(eps_where="inside"), "eps is inside the square root: the denominator is sqrt(v_hat) + eps."),
    (dict(step_offset=1), "the bias corrections use step + 1: step already counts from 1 (1 on the first call), use 1 - beta**step."),
    (dict(step_offset=-1), "the bias corrections use step - 1: step counts from 1 (1 on the first call), use 1 - beta**step."),
]


def variant(params, grads, ms, vs, step, *, lr, betas, eps, weight_decay, bias_correction=True, decay="decoupled", eps_where="outside",
            step_offset=0):  # fmt: skip
    """One step of a (possibly wrong) AdamW on copies, float64; returns the new (params, m, v) lists."""
    b1, b2 = betas
    t = step + step_offset
    out = ([], [], [])
    for p, g, m, v in zip(params, grads, ms, vs):
        p, g, m, v = (x.detach().double().clone() for x in (p, g, m, v))
        if decay == "decoupled":
            p = p * (1 - lr * weight_decay)
        elif decay == "no lr":
            p = p * (1 - weight_decay)
        elif decay == "l2":
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        c1, c2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
        if c1 == 0 or c2 == 0:
            c1 = c2 = float("nan")
        denom = (v / c2).sqrt() + eps if eps_where == "outside" else (v / c2 + eps).sqrt()
        p = p - lr * (m / c1) / denom
        for lst, x in zip(out, (p, m, v)):
            lst.append(x)
    return out


def _flat(tensors):
    return torch.cat([t.detach().double().flatten().cpu() for t in tensors])


def run(fn, rng, dtype, *, n_steps=4, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, tol=None):
    """Run fn and torch.optim.AdamW side by side; fail at the first step where they differ."""
    tol = tol or (dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-5))
    hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    params = [torch.randn(s, generator=rng, dtype=torch.float64).to(dtype) for s in SHAPES]
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.AdamW(ref, foreach=False, **hyper)
    objects = [id(t) for t in params + ms + vs]
    for step in range(1, n_steps + 1):
        # gradients of every scale: tiny ones (where eps and the bias correction of v matter) to large ones
        grads = [torch.randn(s, generator=rng, dtype=torch.float64).mul(10.0 ** torch.randint(-6, 2, s, generator=rng)).to(dtype)
                 for s in SHAPES]  # fmt: skip
        before = (list(params), list(ms), list(vs))
        before = tuple([t.clone() for t in lst] for lst in before)
        grads_copy = [g.clone() for g in grads]
        result = fn(params, grads, ms, vs, step, **hyper)
        assert result is None, "adamw_step updates in place and returns None."
        assert [id(t) for t in params + ms + vs] == objects, "adamw_step must update the given tensors in place, not replace them."
        assert all(torch.equal(g, c) for g, c in zip(grads, grads_copy)), "adamw_step changed the gradients: they are read only."
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        expected = _flat(ref)
        candidates = [(lambda kw=kw, b=before, gr=grads, s=step: _flat(variant(*b[:1], gr, *b[1:], s, **hyper, **kw)[0]), sentence)
                      for kw, sentence in MISTAKES]  # fmt: skip
        hint = which_mistake(_flat(params), expected, candidates, **tol)
        assert_close(_flat(params), expected, **tol, what=f"the parameters after step {step}",
                     hint=hint or f"the parameters differ from torch.optim.AdamW's after step {step} ({hyper}).")  # fmt: skip
        for name, mine, key in (("exp_avg", ms, "exp_avg"), ("exp_avg_sq", vs, "exp_avg_sq")):
            theirs = _flat([opt.state[r][key] for r in ref])
            assert_close(_flat(mine), theirs, **tol, what=f"{name} after step {step}",
                         hint=f"{name} differs from torch.optim.AdamW's running average after step {step}.")  # fmt: skip


@adamw_exercise
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_adamw(impl, rng, dtype):
    run(impl.load(TOPIC).adamw_step, rng, dtype)


@adamw_exercise
@pytest.mark.parametrize("betas,weight_decay,eps", [((0.9, 0.999), 0.0, 1e-8), ((0.8, 0.9), 0.5, 1e-4), ((0.0, 0.5), 0.01, 1e-6)])
def test_other_hyperparameters(impl, rng, betas, weight_decay, eps):
    run(impl.load(TOPIC).adamw_step, rng, torch.float64, betas=betas, weight_decay=weight_decay, eps=eps, lr=3e-3, n_steps=3)


@adamw_exercise
def test_first_step_moves_each_weight_by_about_lr(impl, rng):
    """Step 1, no decay: m_hat = g and v_hat = g**2, so each weight moves by lr * g / (|g| + eps), about lr * sign(g)."""
    fn = impl.load(TOPIC).adamw_step
    p = torch.randn(50, generator=rng, dtype=torch.float64)
    g = torch.randn(50, generator=rng, dtype=torch.float64)
    new = p.clone()
    fn([new], [g], [torch.zeros_like(p)], [torch.zeros_like(p)], 1, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    expected = p - 0.01 * g / (g.abs() + 1e-8)
    wrong = [(lambda: variant([p], [g], [torch.zeros_like(p)], [torch.zeros_like(p)], 1, lr=0.01, betas=(0.9, 0.95), eps=1e-8,
                              weight_decay=0.0, bias_correction=False)[0][0], MISTAKES[0][1])]  # fmt: skip
    hint = which_mistake(new, expected, wrong, atol=1e-12, rtol=1e-10)
    assert_close(new, expected, atol=1e-12, rtol=1e-10, what="the parameters after step 1",
                 hint=hint or "after the first step each weight must move by lr * g / (|g| + eps), about lr against its gradient's sign.")  # fmt: skip
