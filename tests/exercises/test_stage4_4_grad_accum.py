"""Graded tests of stage 4: gradient accumulation (exercises/stage4_training/grad_accum.py).

``accumulate_gradients`` runs on a tiny language model (an embedding, a hidden
layer and an output layer, float64) over micro-batches of different sizes whose
labels are partly -100 (so each holds a different number of counted tokens; one
holds none). Its gradients and returned loss are compared with one backward of
the whole batch in one piece, on a copy of the model: the sum of the per-token
losses over every counted token divided by their number. The model's ``.grad``
holds junk from "a previous step" when it is called. ``loss_sum_fn`` must be
called once per micro-batch, each followed by its own backward.

A wrong gradient is compared with the usual mistakes (each micro-batch
averaged over its own tokens, then divided by the number of micro-batches, or
not; the summed loss never divided; the ignored positions counted in N; the
previous gradient left in .grad) and the failure names the one it matches.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage4_training/grad_accum"

accum_exercise = pytest.mark.exercise("accumulate_gradients", stage=4, points=2, title="Gradient accumulation over tokens")

V, C, T = 13, 8, 6
IGNORE = -100


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(V, C)
        self.fc = torch.nn.Linear(C, C)
        self.lm_head = torch.nn.Linear(C, V)

    def forward(self, input_ids):  # (B, T) -> (B, T, V)
        return self.lm_head(torch.tanh(self.fc(self.wte(input_ids))))


def loss_sum(model, input_ids, labels):
    """The sum of the per-token cross-entropies over the counted tokens (reduction='sum')."""
    logits = model(input_ids)
    return F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")


def micro_batches(rng, sizes, keep):
    """(input_ids, labels) of batch sizes ``sizes``; each label is kept with probability keep[k] (else -100)."""
    out = []
    for b, p in zip(sizes, keep):
        x = torch.randint(0, V, (b, T), generator=rng)
        y = torch.randint(0, V, (b, T), generator=rng)
        y = torch.where(torch.rand(b, T, generator=rng) < p, y, torch.full_like(y, IGNORE))
        out.append((x, y))
    return out


def grads_of(model):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype) for p in model.parameters()])


def variant(model, batches, *, mean="tokens", count_ignored=False, keep_old=None):
    """The gradient (flat) and loss that a (possibly wrong) accumulation gives, on a copy of the model."""
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    if keep_old is not None:
        for p, g in zip(m.parameters(), keep_old):
            p.grad = g.clone()
    n = sum(int(y.numel() if count_ignored else (y != IGNORE).sum()) for _, y in batches)
    total = 0.0
    for x, y in batches:
        s = loss_sum(m, x, y)
        nk = (y != IGNORE).sum()
        loss = {"tokens": s / n, "micro mean": s / nk / len(batches), "sum of micro means": s / nk, "sum": s}[mean]
        loss.backward()
        total += loss.item()
    return grads_of(m), total


def mistakes(model, batches, old):
    return [
        (lambda: variant(model, batches, mean="micro mean")[0],
         "each micro-batch is averaged over its own tokens, then over the micro-batches: divide each micro-batch's summed loss by "
         "N, the counted tokens of the WHOLE batch, so that every token weighs the same."),
        (lambda: variant(model, batches, mean="sum of micro means")[0],
         "each micro-batch's mean loss is added up: divide each micro-batch's summed loss by N, the counted tokens of the whole batch."),
        (lambda: variant(model, batches, mean="sum")[0],
         "the summed loss is never divided: divide each micro-batch's loss sum by N, the counted tokens of the whole batch."),
        (lambda: variant(model, batches, count_ignored=True)[0],
         "N counts the positions whose label is -100: count only the labels != -100."),
        (lambda: variant(model, batches, keep_old=old)[0],
         "the gradient of the previous step is still in .grad: zero the gradients first (model.zero_grad(set_to_none=True))."),
    ]  # fmt: skip


def check(fn, rng, sizes, keep):
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=rng)))
    model = TinyLM().double()
    batches = micro_batches(rng, sizes, keep)
    old = [torch.randn(p.shape, generator=rng, dtype=p.dtype) for p in model.parameters()]  # "a previous step's gradient"

    # the reference: the whole batch in one piece, one backward
    ref = copy.deepcopy(model)
    total = sum(loss_sum(ref, x, y) for x, y in batches) / sum(int((y != IGNORE).sum()) for _, y in batches)
    total.backward()
    expected, total = grads_of(ref), total.item()

    learner = copy.deepcopy(model)
    for p, g in zip(learner.parameters(), old):
        p.grad = g.clone()
    calls = []

    def counted_loss_sum(m, x, y):
        assert m is learner, "call loss_sum_fn with the model that was given."
        if calls:
            assert all(p.grad is not None for p in learner.parameters() if p.requires_grad), (
                "loss_sum_fn was called again before the previous micro-batch's backward: call backward on each micro-batch's "
                "loss right after its forward, so that only one micro-batch's activations are held at a time.")  # fmt: skip
        calls.append(1)
        return loss_sum(m, x, y)

    got_loss = fn(learner, batches, counted_loss_sum)
    assert len(calls) == len(batches), f"loss_sum_fn was called {len(calls)} times for {len(batches)} micro-batches: once each."
    got = grads_of(learner)
    hint = which_mistake(got, expected, mistakes(model, batches, old), atol=1e-9, rtol=1e-7)
    assert_close(got, expected, atol=1e-9, rtol=1e-7, what="the accumulated gradients",
                 hint=hint or "the gradients differ from one backward of the whole batch's token-averaged loss.")  # fmt: skip
    assert isinstance(got_loss, float), f"accumulate_gradients must return the loss as a Python float, got {type(got_loss).__name__}."
    assert abs(got_loss - total) <= 1e-9 * abs(total) + 1e-9, (
        f"the returned loss {got_loss:.6g} is not the whole batch's mean over its counted tokens, {total:.6g}.")  # fmt: skip


@accum_exercise
def test_micro_batches_with_different_token_counts(impl, rng):
    check(impl.load(TOPIC).accumulate_gradients, rng, sizes=[2, 1, 3], keep=[0.9, 0.3, 0.6])


@accum_exercise
def test_a_micro_batch_with_no_counted_token(impl, rng):
    """The middle micro-batch's labels are all -100: it adds nothing, and nothing may become NaN."""
    check(impl.load(TOPIC).accumulate_gradients, rng, sizes=[2, 2, 1], keep=[0.8, 0.0, 0.5])


@accum_exercise
def test_one_micro_batch(impl, rng):
    check(impl.load(TOPIC).accumulate_gradients, rng, sizes=[3], keep=[0.7])


@accum_exercise
@pytest.mark.parametrize("n_micro", [2, 5])
def test_equal_micro_batches(impl, rng, n_micro):
    """Same sizes, but the -100 labels still make the counts differ."""
    check(impl.load(TOPIC).accumulate_gradients, rng, sizes=[2] * n_micro, keep=[0.5 + 0.1 * k for k in range(n_micro)])
