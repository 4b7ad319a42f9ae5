"""Graded tests of stage 2: the online softmax (exercises/stage2_attention/online_softmax.py).

What is graded is the algorithm, not just the answer:

* ``online_softmax_step`` is fed running states (m, l) and a block, and its new
  state is compared with the update rule (a max that grows must rescale the sum;
  scores of +-1e4 must not overflow);
* ``online_softmax`` is run with ``online_softmax_step`` wrapped by a recorder:
  it must visit the row in order, in blocks of at most ``block`` scores, through
  that function, and its result must follow from the final (m, l): a call of
  ``torch.softmax`` on the whole row does not pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage2_attention/online_softmax"

online_exercise = pytest.mark.exercise("online_softmax", stage=2, points=4, title="Online softmax")


def step64(m, l, block):
    """The update rule in float64."""
    m, l, block = m.double(), l.double(), block.double()
    m_new = torch.maximum(m, block.amax(dim=-1))
    return m_new, l * torch.exp(m - m_new) + torch.exp(block - m_new[..., None]).sum(dim=-1)


def state_after(x, upto):
    """(m, l) of x[..., :upto] in float64, as the running state should hold them."""
    x = x[..., :upto].double()
    m = x.amax(dim=-1)
    return m, torch.exp(x - m[..., None]).sum(dim=-1)


def check_step(out, m, l, block):
    assert isinstance(out, tuple) and len(out) == 2, "online_softmax_step must return the pair (m_new, l_new)."
    m_new, l_new = out
    exp_m, exp_l = step64(m, l, block)
    assert_close(m_new, exp_m, hint="the new running max must be max(m, max(block)).", what="m_new")
    l64, block64 = l.double(), block.double()
    hint = which_mistake(l_new, exp_l, [
        (lambda: l64 + torch.exp(block64 - exp_m[..., None]).sum(dim=-1),
         "the running sum is not rescaled when the max grows: multiply l by exp(m - m_new)."),
        (lambda: l64 + torch.exp(block64).sum(dim=-1),
         "the running sum is relative to the running max: add sum(exp(block - m_new)), not sum(exp(block))."),
    ], rtol=1e-4) or "the running sum must be l * exp(m - m_new) + sum(exp(block - m_new))."  # fmt: skip
    assert_close(l_new, exp_l, hint=hint, what="l_new")


@online_exercise
def test_step_rescales_when_the_max_grows(impl, rng):
    step = impl.load(TOPIC).online_softmax_step
    m = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    l = torch.rand(4, 3, generator=rng, dtype=torch.float64) * 5 + 1
    block = torch.randn(4, 3, 7, generator=rng, dtype=torch.float64) + 3.0  # above the old max: it grows
    check_step(step(m, l, block), m, l, block)


@online_exercise
def test_step_when_the_max_stays(impl, rng):
    step = impl.load(TOPIC).online_softmax_step
    m = torch.full((5,), 4.0, dtype=torch.float64)
    l = torch.rand(5, generator=rng, dtype=torch.float64) + 1
    block = torch.rand(5, 3, generator=rng, dtype=torch.float64)  # all below 4
    check_step(step(m, l, block), m, l, block)


@online_exercise
def test_step_from_the_start(impl, rng):
    step = impl.load(TOPIC).online_softmax_step
    m = torch.full((2, 3), float("-inf"))
    l = torch.zeros(2, 3)
    block = torch.randn(2, 3, 5, generator=rng)
    out = step(m, l, block)
    check_step(out, m, l, block)
    assert torch.isfinite(out[1]).all(), "from m = -inf and l = 0 the first block must give a finite sum."


@online_exercise
def test_step_large_scores_do_not_overflow(impl, rng):
    step = impl.load(TOPIC).online_softmax_step
    m = torch.tensor([1e4, -1e4], dtype=torch.float64)
    l = torch.tensor([2.0, 3.0], dtype=torch.float64)
    block = torch.randn(2, 6, generator=rng, dtype=torch.float64) + torch.tensor([[1e4 + 1.0], [-1e4 - 0.5]], dtype=torch.float64)
    m_new, l_new = step(m, l, block)
    assert torch.isfinite(l_new).all() and (l_new > 0).all(), (
        "scores of +-1e4 overflow or vanish: exponentiate block - m_new, never the scores themselves."
    )
    check_step((m_new, l_new), m, l, block)


def run_recorded(module, monkeypatch, x, block):
    """Call online_softmax with online_softmax_step wrapped: return its result and the recorded calls."""
    calls = []
    original = module.online_softmax_step

    def recorder(m, l, x_block):
        out = original(m, l, x_block)
        calls.append((x_block.detach().clone(), out[0].detach().clone(), out[1].detach().clone()))
        return out

    monkeypatch.setattr(module, "online_softmax_step", recorder)
    return module.online_softmax(x, block), calls


@online_exercise
@pytest.mark.parametrize("shape,block", [((3, 23), 8), ((2, 4, 17), 5), ((5, 16), 16), ((4, 9), 1), ((2, 6), 64)])
def test_online_softmax_visits_blocks_in_order(impl, rng, monkeypatch, shape, block):
    module = impl.load(TOPIC)
    x = torch.randn(*shape, generator=rng, dtype=torch.float64) * 3
    result, calls = run_recorded(module, monkeypatch, x, block)
    N = shape[-1]
    assert calls, "online_softmax must visit x block by block through online_softmax_step; it was never called."
    widths = [c[0].shape[-1] for c in calls]
    assert max(widths) <= block, f"blocks must hold at most block={block} scores; one held {max(widths)}."
    assert sum(widths) == N and len(calls) == math.ceil(N / block), (
        f"a row of {N} scores in blocks of {block} needs {math.ceil(N / block)} calls of online_softmax_step, "
        f"got {len(calls)} covering {sum(widths)} scores."
    )
    seen = torch.cat([c[0] for c in calls], dim=-1)
    assert torch.equal(seen.double(), x), "the blocks must be x[..., j:j + block] for j = 0, block, 2*block, ... in order."
    done = 0
    for x_block, m, l in calls:  # the running state after each block
        done += x_block.shape[-1]
        exp_m, exp_l = state_after(x, done)
        assert_close(m, exp_m, hint="the running max after a block must be the max of all scores so far.", what="m")
        assert_close(l, exp_l, hint="the running sum after a block must be sum(exp(x - m)) over all scores so far.", what="l")
    check_result(result, x)


def check_result(result, x):
    assert isinstance(result, tuple) and len(result) == 2, "online_softmax must return the pair (probs, lse)."
    probs, lse = result
    x64 = x.double()
    assert_close(probs, torch.softmax(x64, dim=-1), hint="the probabilities must be exp(x - m) / l.", what="probs")
    expected = torch.logsumexp(x64, dim=-1)
    m = x64.amax(dim=-1)
    hint = which_mistake(lse, expected, [(expected - m, "the log-sum-exp is off by the max: it is m + log(l), not log(l).")],
                         atol=1e-6, rtol=1e-5) or "the log-sum-exp must be m + log(l)."  # fmt: skip
    assert_close(lse, expected, hint=hint, what="lse")


@online_exercise
def test_online_softmax_large_scores_and_float32(impl, rng, monkeypatch):
    module = impl.load(TOPIC)
    x = torch.randn(3, 19, generator=rng) * 2 + torch.tensor([[1e4], [-1e4], [0.0]])
    x[0, 15:] += 50.0  # the max arrives late: the sum is rescaled on the way
    result, calls = run_recorded(module, monkeypatch, x, 4)
    assert len(calls) == 5, f"a row of 19 scores in blocks of 4 needs 5 calls of online_softmax_step, got {len(calls)}."
    probs, lse = result
    assert torch.isfinite(probs).all() and torch.isfinite(lse).all(), "scores of +-1e4 give inf/NaN: subtract the running max."
    assert probs.dtype == torch.float32, f"probs must keep x's dtype float32, got {probs.dtype}."
    check_result(result, x)
