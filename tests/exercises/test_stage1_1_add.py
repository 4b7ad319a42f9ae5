"""Graded tests of stage 1: the vector-add kernel (exercises/stage1_kernels/add.py).

Every input and output lives inside a larger buffer filled with a sentinel (a
guard region), so a load or store past the end stays in memory the test owns: a
missing store mask shows up as a changed guard, never as a crash. In the
interpreter, ``memcheck`` goes further and names any load or store outside x, y
or out before it happens. Sums are compared with float64.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.device import get_device
from llm_course.grading.checks import assert_close, assert_guards_intact, guarded, guarded_empty
from llm_course.grading.memcheck import memcheck

TOPIC = "stage1_kernels/add"
BLOCK = 1024  # the launcher's BLOCK_SIZE

add_exercise = pytest.mark.exercise("add_kernel", stage=1, points=2, title="Triton: vector add")


@pytest.fixture(autouse=True)
def _memcheck():
    """In the interpreter: a load or store outside the kernel's tensors fails, named, before it happens."""
    with memcheck(hint="mask the loads and the store with offsets < n."):
        yield


def _rand(rng, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=rng).to(dtype).to(get_device())


def _run(mod, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """add_forward on guarded inputs into a guarded output; fail if anything around them was written."""
    xg, yg = guarded(x, "x"), guarded(y, "y")
    out = guarded_empty(x.shape, x.dtype, x.device, name="out")
    result = mod.add_forward(xg, yg, out=out)
    assert_guards_intact(out, xg, yg, hint="is the store masked with offsets < n?")
    return result


@add_exercise
def test_one_full_block(impl, rng):
    mod = impl.load(TOPIC)
    x, y = _rand(rng, BLOCK), _rand(rng, BLOCK)
    out = _run(mod, x, y)
    assert_close(out, x.double() + y.double(), hint="x + y is wrong for one full block of 1024 elements: load x and y at x_ptr + offsets and y_ptr + offsets, store their sum at out_ptr + offsets.")


@add_exercise
def test_many_blocks(impl, rng):
    mod = impl.load(TOPIC)
    x, y = _rand(rng, 5 * BLOCK), _rand(rng, 5 * BLOCK)
    out = _run(mod, x, y)
    assert_close(out, x.double() + y.double(), hint="Only part of a 5-block input is right: each program must start at its own block, offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE) with pid = tl.program_id(axis=0).")


@add_exercise
@pytest.mark.parametrize("n", [1, 1000, 3 * BLOCK + 5])
def test_last_partial_block(impl, rng, n):
    mod = impl.load(TOPIC)
    x, y = _rand(rng, n), _rand(rng, n)
    out = _run(mod, x, y)
    assert_close(out, x.double() + y.double(), hint=f"With n = {n}, not a multiple of the block size, the result is wrong: the last block must handle the elements with offsets < n (mask the loads and the store).")


@add_exercise
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_any_shape_and_dtype(impl, rng, dtype):
    mod = impl.load(TOPIC)
    x, y = _rand(rng, 37, 129, dtype=dtype), _rand(rng, 37, 129, dtype=dtype)
    out = _run(mod, x, y)
    assert out.dtype == dtype, f"The sum of two {dtype} tensors must be {dtype}, got {out.dtype}."
    assert_close(out, x.double() + y.double(), hint=f"x + y is wrong for a (37, 129) {str(dtype).removeprefix('torch.')} tensor.")


@add_exercise
def test_gradients_flow_through(impl, rng):
    mod = impl.load(TOPIC)
    x = _rand(rng, 3, 333).requires_grad_()
    y = _rand(rng, 3, 333).requires_grad_()
    _run(mod, x.detach(), y.detach())  # a stray store fails here, safely
    out = mod.add(x, y)
    dout = _rand(rng, 3, 333)
    out.backward(dout)
    assert_close(out, x.double() + y.double(), hint="add(x, y) through autograd gives a wrong sum.")
    assert_close(x.grad, dout.double(), hint="The gradient of x + y with respect to x should be the incoming gradient.", what="x.grad")
    assert_close(y.grad, dout.double(), hint="The gradient of x + y with respect to y should be the incoming gradient.", what="y.grad")
