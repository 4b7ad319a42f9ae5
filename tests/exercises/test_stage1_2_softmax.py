"""Graded tests of stage 1: the fused softmax kernel (exercises/stage1_kernels/softmax.py).

Inputs and outputs sit inside guard regions (larger buffers filled with a
sentinel), so a read or write past a row's end stays in memory the test owns: a
missing mask gives a wrong answer or a changed guard, never a crash. In the
interpreter, ``memcheck`` names any load or store outside x or y before it
happens. Results are compared with a float64 softmax of the same inputs. Each
test aims at one usual mistake.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.device import get_device
from llm_course.grading.checks import SENTINEL, assert_close, assert_guards_intact, guarded, guarded_empty
from llm_course.grading.memcheck import memcheck

TOPIC = "stage1_kernels/softmax"

softmax_exercise = pytest.mark.exercise("softmax_kernel", stage=1, points=3, title="Triton: fused softmax")


@pytest.fixture(autouse=True)
def _memcheck():
    """In the interpreter: a load or store outside the kernel's tensors fails, named, before it happens."""
    with memcheck(hint="mask the load and the store with cols < n_cols, and address each row with its row stride."):
        yield


def _rand(rng, *shape, dtype=torch.float32, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=rng) * scale).to(dtype).to(get_device())


def _reference(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.double().cpu(), dim=-1)


def _run(mod, x: torch.Tensor) -> torch.Tensor:
    """softmax_forward into a guarded output (x guarded too when contiguous); fail if a guard changed."""
    inputs = []
    if x.is_contiguous():
        x = guarded(x, "x")  # the guard is SENTINEL, a large logit: reading it changes a softmax a lot
        inputs.append(x)
    out = guarded_empty(x.shape, x.dtype, x.device, name="y")
    result = mod.softmax_forward(x, out=out)
    assert_guards_intact(out, *inputs, hint="mask the store with cols < n_cols, and address y's rows with y_row_stride.")
    return result


@softmax_exercise
def test_one_row(impl, rng):
    mod = impl.load(TOPIC)
    x = _rand(rng, 1, 128)
    assert_close(_run(mod, x), _reference(x), hint="The softmax of one row of 128 values is wrong: compute exp(x - max(x)) / sum(exp(x - max(x))) over the row.")


@softmax_exercise
def test_many_rows(impl, rng):
    mod = impl.load(TOPIC)
    x = _rand(rng, 37, 64)
    assert_close(_run(mod, x), _reference(x), hint="Only some rows of a (37, 64) input are right: program row = tl.program_id(0) must read x_ptr + row * x_row_stride + cols and write y_ptr + row * y_row_stride + cols.")


@softmax_exercise
@pytest.mark.parametrize("n_cols", [100, 1000, 1])
def test_rows_not_a_power_of_two(impl, rng, n_cols):
    mod = impl.load(TOPIC)
    x = _rand(rng, 9, n_cols)
    assert_close(_run(mod, x), _reference(x), hint=f"With rows of {n_cols} values (BLOCK_SIZE = {1 << (n_cols - 1).bit_length()}) the softmax is wrong: mask the load and the store with cols < n_cols, and load the padding as other=-float('inf') so that it adds nothing to the max or the sum.")


@softmax_exercise
def test_large_logits(impl, rng):
    mod = impl.load(TOPIC)
    x = _rand(rng, 8, 200, scale=1e4)  # logits of about +-1e4: exp(1e4) is inf in float32
    assert_close(_run(mod, x), _reference(x), hint="Rows don't sum to 1 when inputs are large (about +-1e4): did you subtract the row max before tl.exp?")


@softmax_exercise
def test_negative_rows_padding(impl, rng):
    mod = impl.load(TOPIC)
    x = -_rand(rng, 8, 100).abs() - 5.0  # every value below -5; BLOCK_SIZE = 128 leaves 28 padding lanes
    assert_close(_run(mod, x), _reference(x), hint="Rows of negative values are wrong: load with other=-float('inf'), not 0, so the padding neither wins the max nor adds exp(0) = 1 to the sum.")


@softmax_exercise
def test_rows_of_a_wider_tensor(impl, rng):
    mod = impl.load(TOPIC)
    wide = torch.full((21, 77 + 13), SENTINEL, device=get_device())  # one spare row: stray reads stay inside
    wide[:20, :77] = _rand(rng, 20, 77)
    x = wide[:20, :77]  # rows 90 elements apart in memory, 77 long; the output's rows are 77 apart
    assert_close(_run(mod, x), _reference(x), hint="Wrong when x is a slice of a wider tensor (rows 90 elements apart): address x's rows with x_row_stride and y's rows with y_row_stride, never with n_cols.")


@softmax_exercise
def test_3d_float16_and_gradient(impl, rng):
    mod = impl.load(TOPIC)
    x = _rand(rng, 3, 5, 33, dtype=torch.float16, scale=3.0)
    out = _run(mod, x)
    assert out.dtype == torch.float16, f"The softmax of a float16 tensor must be float16, got {out.dtype}."
    assert_close(out, _reference(x), hint="The softmax of a (3, 5, 33) float16 input is wrong: compute in float32 (.to(tl.float32)) and store with .to(y_ptr.dtype.element_ty).")
    xg = x.float().requires_grad_()
    _run(mod, xg.detach())  # first with a guarded output: a stray store fails here instead of writing past y
    y = mod.softmax(xg)
    dy = _rand(rng, 3, 5, 33)
    y.backward(dy)
    xr = x.double().cpu().requires_grad_()
    torch.softmax(xr, dim=-1).backward(dy.double().cpu())
    assert_close(xg.grad, xr.grad, hint="The gradient through softmax(x) is wrong: its backward uses your forward's output y.", what="x.grad")
