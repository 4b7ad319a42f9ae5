"""Graded tests of stage 4: the cross-entropy kernels (exercises/stage4_training/cross_entropy.py).

The forward kernel is graded through its launcher ``cross_entropy_forward``: the
loss and logsumexp of every row against float64 ones computed here, with
vocabularies that are not powers of two and are walked in several blocks, rows
whose target is ignore_index (loss 0), and logits around 1e4 (which overflow
exp without the max subtracted). The backward kernel is graded through
``cross_entropy_backward`` with a scale made here, against
``(softmax - onehot) * scale`` in float64 (0 for ignored rows). Then
``cross_entropy`` (the signature of ``llm_course.ops.cross_entropy``) against
``torch.nn.functional.cross_entropy`` in float64, loss and gradient, mean and sum.

Outputs lie inside buffers filled with a sentinel, so a stray store is caught;
in the interpreter, memcheck names a stray load or store before it happens
(loading x_t at t = -100 reads before the row). A wrong result is compared with
the usual mistakes (ignored rows given a loss, the gradient not scaled, the
one-hot not subtracted, ignored rows given a gradient) and the failure names
the one it matches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course.device import get_device
from llm_course.grading.checks import assert_close, assert_guards_intact, guarded, guarded_empty, which_mistake
from llm_course.grading.memcheck import memcheck

TOPIC = "stage4_training/cross_entropy"

ce_exercise = pytest.mark.exercise("cross_entropy", stage=4, points=3, title="Cross-entropy kernels: online logsumexp, forward and backward")

IGNORE = -100
OVERFLOW = ("the loss is inf/NaN for logits around 1e4: exp overflows; subtract the running max m, "
            "d = sum exp(x - m), lse = m + log(d).")  # fmt: skip
IGNORED_LOSS = "a row whose target is ignore_index has a loss: store 0 for it (its lse is still stored)."
NOT_SCALED = "the gradient is not multiplied by the scale: load the one float at SCALE and multiply (softmax - onehot) by it."
NO_ONEHOT = "the gradient is softmax(x) * scale: subtract 1 at the target's column, (exp(x - lse) - [j == t]) * scale."
IGNORED_GRAD = "a row whose target is ignore_index has a gradient: its scale is 0, so its gradient is all 0."


@pytest.fixture(autouse=True)
def _memcheck():
    with memcheck(hint="mask the loads and stores to cols < n_cols, and load x_t only when t != ignore_index."):
        yield


def _tol(dtype):
    return dict(atol=2e-3, rtol=2e-3) if dtype == torch.float16 else dict(atol=1e-5, rtol=1e-5)


def _case(rng, N, V, *, dtype=torch.float32, scale=3.0, shift=0.0, n_ignored=2):
    logits = scale * torch.randn(N, V, generator=rng) + shift
    targets = torch.randint(0, V, (N,), generator=rng)
    targets[torch.randperm(N, generator=rng)[:n_ignored]] = IGNORE
    return logits.to(dtype).to(get_device()), targets.to(get_device())


def _reference(logits, targets):
    """(loss (N,), lse (N,), softmax (N, V), onehot (N, V), counted (N,)) in float64 on the CPU."""
    x = logits.detach().double().cpu()
    t = targets.cpu()
    counted = t != IGNORE
    lse = torch.logsumexp(x, -1)
    x_t = x.gather(1, t.clamp(min=0)[:, None])[:, 0]
    loss = torch.where(counted, lse - x_t, torch.zeros_like(lse))
    onehot = F.one_hot(t.clamp(min=0), x.shape[1]).double() * counted[:, None]
    return loss, lse, torch.softmax(x, -1), onehot, counted


def _forward(mod, logits, targets, block_size=None):
    N = logits.shape[0]
    loss = guarded_empty((N,), torch.float32, logits.device, name="loss")
    lse = guarded_empty((N,), torch.float32, logits.device, name="lse")
    got = mod.cross_entropy_forward(guarded(logits, "logits"), targets, IGNORE, block_size=block_size, loss=loss, lse=lse)
    assert isinstance(got, tuple) and got[0] is loss and got[1] is lse, "cross_entropy_forward must return the (loss, lse) it was given."
    assert_guards_intact(loss, lse, hint="store one loss and one lse per row, at LOSS + row and LSE + row.")
    return loss, lse


def _check_forward(mod, logits, targets, hint, block_size=None):
    loss, lse = _forward(mod, logits, targets, block_size)
    ref_loss, ref_lse, *_ , counted = _reference(logits, targets)
    tol = dict(atol=1e-4, rtol=1e-5)  # computed in float32 from the exact logits, whatever their dtype
    assert_close(lse, ref_lse, hint=f"the logsumexp of the rows is wrong: {hint}", what="lse", **tol)
    wrong = [(lambda: torch.where(counted, ref_loss, ref_lse), IGNORED_LOSS)]
    assert_close(loss, ref_loss, hint=which_mistake(loss, ref_loss, wrong, **tol) or f"the loss of the rows is wrong: {hint}", what="loss", **tol)


@ce_exercise
@pytest.mark.parametrize("V", [1000, 97, 128, 5])
def test_forward_rows(impl, rng, V):
    mod = impl.load(TOPIC)
    logits, targets = _case(rng, 6, V)
    _check_forward(mod, logits, targets, f"V = {V}, walked in blocks of {mod.default_block(V)}; is each block masked to cols < n_cols "
                                         "with other=-inf, and d rescaled by exp(m - m_new) when the max grows?")  # fmt: skip


@ce_exercise
def test_forward_block_smaller_than_the_row(impl, rng):
    """Blocks of 16 over 300 logits: 19 steps of the online logsumexp, the max growing in later blocks."""
    mod = impl.load(TOPIC)
    logits, targets = _case(rng, 5, 300)
    logits[:, 250:] += 6.0  # the max sits in the last blocks
    _check_forward(mod, logits, targets, "rescale d by exp(m - m_new) whenever a block raises the running max.", block_size=16)


@ce_exercise
def test_forward_large_logits(impl, rng):
    """Logits around 1e4: exp(x) overflows float32 unless the max is subtracted first."""
    mod = impl.load(TOPIC)
    logits, targets = _case(rng, 4, 200, scale=30.0, shift=1e4, n_ignored=1)
    loss, lse = _forward(mod, logits, targets)
    ref_loss, ref_lse, *_ = _reference(logits, targets)
    assert_close(lse, ref_lse, hint=OVERFLOW, what="lse", atol=2e-2, rtol=1e-6)  # lse ~ 1e4: float32 keeps ~1e-3
    assert_close(loss, ref_loss, hint=OVERFLOW, what="loss", atol=2e-2, rtol=1e-4)


@ce_exercise
def test_forward_float16_logits(impl, rng):
    mod = impl.load(TOPIC)
    logits, targets = _case(rng, 5, 333, dtype=torch.float16)
    _check_forward(mod, logits, targets, "load the float16 logits and compute in float32 (.to(tl.float32)).")


@ce_exercise
def test_every_row_ignored(impl, rng):
    mod = impl.load(TOPIC)
    logits, _ = _case(rng, 3, 50)
    targets = torch.full((3,), IGNORE, device=logits.device)
    _check_forward(mod, logits, targets, "every target is ignore_index: every loss is 0.")


def _backward(mod, logits, targets, lse, scale, block_size=None):
    grad = guarded_empty(logits.shape, logits.dtype, logits.device, name="grad", margin=8)
    got = mod.cross_entropy_backward(guarded(logits, "logits"), targets, lse, scale, IGNORE, block_size=block_size, grad=grad)
    assert got is grad, "cross_entropy_backward must return the grad it was given."
    assert_guards_intact(grad, hint="store each row's n_cols gradients at GRAD + row * stride_grad_row + cols, masked to cols < n_cols.")
    return grad


@ce_exercise
@pytest.mark.parametrize("V,dtype", [(1000, torch.float32), (77, torch.float32), (260, torch.float16)])
def test_backward_rows(impl, rng, V, dtype):
    mod = impl.load(TOPIC)
    logits, targets = _case(rng, 6, V, dtype=dtype)
    _, ref_lse, probs, onehot, counted = _reference(logits, targets)
    s = 0.5 + float(torch.rand((), generator=rng))
    scale = torch.tensor([s], dtype=torch.float32, device=logits.device)
    grad = _backward(mod, logits, targets, ref_lse.float().to(logits.device), scale, block_size=64)
    expected = (probs - onehot) * s * counted[:, None]
    wrong = [
        (lambda: (probs - onehot) * counted[:, None], NOT_SCALED),
        (lambda: probs * s * counted[:, None], NO_ONEHOT),
        (lambda: (probs - onehot) * s, IGNORED_GRAD),
    ]
    tol = _tol(dtype)
    hint = which_mistake(grad, expected, wrong, **tol)
    assert_close(grad, expected, hint=hint or "the gradient differs from (softmax(x) - onehot(t)) * scale.", what="grad", **tol)


@ce_exercise
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_op_against_pytorch(impl, rng, reduction):
    """``cross_entropy`` (your kernels through the given autograd wrapper) against F.cross_entropy in float64."""
    mod = impl.load(TOPIC)
    logits, targets = _case(rng, 8, 500, n_ignored=3)
    x = logits.clone().requires_grad_(True)
    loss = mod.cross_entropy(x, targets, ignore_index=IGNORE, reduction=reduction)
    (2.0 * loss).backward()
    x64 = logits.detach().double().cpu().requires_grad_(True)
    ref = F.cross_entropy(x64, targets.cpu(), ignore_index=IGNORE, reduction=reduction)
    (2.0 * ref).backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0, f"the loss must be a float32 scalar, got {loss.dtype} {tuple(loss.shape)}"
    assert_close(loss, ref.detach(), hint=f"the {reduction} loss differs from F.cross_entropy's.", what="the loss", atol=1e-5, rtol=1e-5)
    assert_close(x.grad, x64.grad, hint=f"the gradient of the {reduction} loss differs from F.cross_entropy's.", what="the gradient", atol=1e-6, rtol=1e-5)
