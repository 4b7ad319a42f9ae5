"""Graded tests of stage 1: the RMSNorm kernels (exercises/stage1_kernels/rmsnorm.py).

Forward: y and the saved rstd against float64, on inputs aimed at the usual
mistakes (mean instead of mean of squares, eps missing or outside the square
root, weight not applied, row strides, rows not a power of two). Backward: dx
and dweight against float64 autograd, given the exact rstd, with several rows
per program so that the reduction over rows is really tested.

The kernels are launched here as their docstrings say the launchers do (one
program per row; several rows per program for the backward), with every
tensor inside a guard region: a store past the end of y, rstd, dx or the
dweight partial sums fails with a sentence instead of corrupting memory. In
the interpreter, ``memcheck`` names any load or store outside the kernel's
tensors before it happens.
"""

from __future__ import annotations

import pytest
import torch
import triton

from llm_course.device import get_device
from llm_course.grading import require_written
from llm_course.grading.checks import assert_close, assert_guards_intact, guarded, guarded_empty
from llm_course.grading.memcheck import memcheck

TOPIC = "stage1_kernels/rmsnorm"
EPS = 1e-5
PROGRAMS = 8  # backward: at most this many programs, so that most hold several rows

forward_exercise = pytest.mark.exercise("rmsnorm_forward", stage=1, points=3, title="Triton: RMSNorm forward")
backward_exercise = pytest.mark.exercise("rmsnorm_backward", stage=1, points=4, title="Triton: RMSNorm backward")


@pytest.fixture(autouse=True)
def _memcheck():
    """In the interpreter: a load or store outside the kernel's tensors fails, named, before it happens."""
    with memcheck(hint="mask the loads and stores with cols < n_cols, and address each row with its row stride."):
        yield


def _rand(rng, *shape, dtype=torch.float32, scale=1.0, shift=0.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=rng) * scale + shift).to(dtype).to(get_device())


def _reference(x: torch.Tensor, w: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 y (M, N) and rstd (M,)."""
    x64, w64 = x.double().cpu(), w.double().cpu()
    rstd = torch.rsqrt(x64.pow(2).mean(dim=-1) + eps)
    return x64 * rstd[:, None] * w64, rstd


def _forward(mod, x, w, eps=EPS):
    """rmsnorm_fwd_kernel, one program per row, into guarded y (M, N) and rstd (M,) float32."""
    require_written(mod.rmsnorm_fwd_kernel)
    M, N = x.shape
    w = guarded(w, "weight")
    inputs = [w]
    if x.is_contiguous():  # a view of a wider tensor stays as it is
        x = guarded(x, "x")
        inputs.append(x)
    y = guarded_empty((M, N), x.dtype, x.device, name="y")
    rstd = guarded_empty((M,), torch.float32, x.device, name="rstd")
    mod.rmsnorm_fwd_kernel[(M,)](x, w, y, rstd, x.stride(0), y.stride(0), N, eps, BLOCK_SIZE=triton.next_power_of_2(N))
    assert_guards_intact(y, hint="mask the store of y with cols < n_cols, and address y's rows with y_row_stride.")
    assert_guards_intact(rstd, hint="store one rstd per program, at rstd_ptr + row.")
    assert_guards_intact(*inputs, hint="the kernel must not write into x or the weight.")
    return y, rstd


# --- forward ----------------------------------------------------------------------------


@forward_exercise
def test_forward(impl, rng):
    mod = impl.load(TOPIC)
    x, w = _rand(rng, 8, 64, shift=2.0), _rand(rng, 64)  # rows with a non-zero mean, a random weight
    y, rstd = _forward(mod, x, w)
    y_ref, rstd_ref = _reference(x, w)
    assert_close(rstd, rstd_ref, hint="rstd is wrong: it is 1 / sqrt(mean(x**2) + eps) of each row (the mean of the squares, not of x), stored at rstd_ptr + row.", what="rstd")
    assert_close(y, y_ref, hint="y is wrong while rstd is right: y = x * rstd * weight (did you load and apply the weight?).")


@forward_exercise
def test_forward_eps_on_zeros_and_tiny_rows(impl, rng):
    mod = impl.load(TOPIC)
    x = torch.cat([torch.zeros(2, 64), torch.randn(4, 64, generator=rng) * 1e-3]).to(get_device())
    w = _rand(rng, 64)
    y, rstd = _forward(mod, x, w)
    y_ref, rstd_ref = _reference(x, w)
    hint = "Rows of zeros or tiny values are wrong: add eps inside the square root, rstd = 1 / sqrt(mean(x**2) + eps)."
    assert_close(rstd, rstd_ref, hint=hint, what="rstd")
    assert_close(y, y_ref, hint=hint)


@forward_exercise
@pytest.mark.parametrize("n_cols", [100, 1000, 1])
def test_forward_rows_not_a_power_of_two(impl, rng, n_cols):
    mod = impl.load(TOPIC)
    x, w = _rand(rng, 7, n_cols), _rand(rng, n_cols)
    y, rstd = _forward(mod, x, w)
    y_ref, rstd_ref = _reference(x, w)
    hint = f"With rows of {n_cols} values the result is wrong: mask the loads (other=0.0) and the store with cols < n_cols, and divide the sum of squares by n_cols, not BLOCK_SIZE."
    assert_close(rstd, rstd_ref, hint=hint, what="rstd")
    assert_close(y, y_ref, hint=hint)


@forward_exercise
def test_forward_rows_of_a_wider_tensor(impl, rng):
    mod = impl.load(TOPIC)
    wide = torch.zeros(13, 80, device=get_device())  # one spare row: stray reads stay inside
    wide[:12, :50] = _rand(rng, 12, 50)
    x, w = wide[:12, :50], _rand(rng, 50)  # rows 80 elements apart in memory; y's rows are 50 apart
    y, rstd = _forward(mod, x, w)
    y_ref, rstd_ref = _reference(x, w)
    hint = "Wrong when x is a slice of a wider tensor (rows 80 elements apart): address x's rows with x_row_stride and y's with y_row_stride."
    assert_close(rstd, rstd_ref, hint=hint, what="rstd")
    assert_close(y, y_ref, hint=hint)


@forward_exercise
def test_forward_float16(impl, rng):
    mod = impl.load(TOPIC)
    x, w = _rand(rng, 9, 96, dtype=torch.float16, scale=4.0), _rand(rng, 96, dtype=torch.float16)
    y, rstd = _forward(mod, x, w)
    y_ref, rstd_ref = _reference(x, w)
    hint = "float16 rows are wrong: load with .to(tl.float32), compute in float32, and store y with .to(y_ptr.dtype.element_ty)."
    assert_close(rstd, rstd_ref, hint=hint, what="rstd", dtype=torch.float32, rtol=1e-4)
    assert_close(y, y_ref, hint=hint)


# --- backward ---------------------------------------------------------------------------


def _backward_reference(dy, x, w, eps=EPS):
    """float64 autograd: dx (M, N), dweight (N,), and the exact rstd (M,)."""
    x64 = x.double().cpu().requires_grad_()
    w64 = w.double().cpu().requires_grad_()
    rstd = torch.rsqrt(x64.pow(2).mean(dim=-1) + eps)
    (x64 * rstd[:, None] * w64).backward(dy.double().cpu())
    return x64.grad, w64.grad, rstd.detach()


def _backward(mod, dy, x, w, rstd):
    """rmsnorm_bwd_kernel on guarded tensors: PROGRAMS programs at most, each over a block of rows.

    Returns dx (M, N) and dweight (N,), the sum of the programs' partial rows.
    """
    require_written(mod.rmsnorm_bwd_kernel)
    M, N = x.shape
    rows_per_program = triton.cdiv(M, min(M, PROGRAMS))
    programs = triton.cdiv(M, rows_per_program)  # the last program may have fewer rows
    dy, x, w, rstd = guarded(dy, "dy"), guarded(x, "x"), guarded(w, "weight"), guarded(rstd.float().to(x.device), "rstd")
    dx = guarded_empty((M, N), x.dtype, x.device, name="dx")
    dw_partial = guarded_empty((programs, N), torch.float32, x.device, name="dw_partial")
    mod.rmsnorm_bwd_kernel[(programs,)](
        dy, x, w, rstd, dx, dw_partial, M, N, rows_per_program, BLOCK_SIZE=triton.next_power_of_2(N)
    )
    assert_guards_intact(dx, hint="mask the store of dx with cols < n_cols, and stop at row n_rows (tl.minimum).")
    assert_guards_intact(dw_partial, hint="store each program's partial dweight once, at dw_partial_ptr + pid * n_cols + cols, masked with cols < n_cols.")
    assert_guards_intact(dy, x, w, rstd, hint="the kernel must not write into its inputs.")
    return dx, dw_partial.sum(dim=0).to(w.dtype)


@backward_exercise
def test_backward_one_row_per_program(impl, rng):
    mod = impl.load(TOPIC)
    x, w, dy = _rand(rng, 3, 64, shift=1.0), _rand(rng, 64), _rand(rng, 3, 64)
    dx_ref, dw_ref, rstd = _backward_reference(dy, x, w)
    dx, dw = _backward(mod, dy, x, w, rstd)
    assert_close(dx, dx_ref, hint="dx is wrong: dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dy * w and x_hat = x * rstd; the second term is there because x also changes rstd.", what="dx")
    assert_close(dw, dw_ref, hint="dweight is wrong: accumulate dy * x_hat in float32 and store it at dw_partial_ptr + pid * n_cols + cols.", what="dweight")


@backward_exercise
def test_backward_many_rows_per_program(impl, rng):
    mod = impl.load(TOPIC)
    M = 37  # 8 programs of 5 rows, the last with 2
    x, w, dy = _rand(rng, M, 64), _rand(rng, 64), _rand(rng, M, 64)
    dx_ref, dw_ref, rstd = _backward_reference(dy, x, w)
    dx, dw = _backward(mod, dy, x, w, rstd)
    assert_close(dx, dx_ref, hint="dx is wrong when each program has several rows: loop over rows pid * rows_per_program up to tl.minimum(that + rows_per_program, n_rows), and address row r at r * n_cols.", what="dx")
    assert_close(dw, dw_ref, hint="dweight is wrong when each program has several rows: add dy * x_hat of every row into the partial sum (dw += ...) and store it once, after the loop.", what="dweight")


@backward_exercise
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_backward_rows_not_a_power_of_two(impl, rng, dtype):
    mod = impl.load(TOPIC)
    x, w, dy = _rand(rng, 11, 100, dtype=dtype), _rand(rng, 100, dtype=dtype), _rand(rng, 11, 100, dtype=dtype)
    dx_ref, dw_ref, rstd = _backward_reference(dy, x, w)
    dx, dw = _backward(mod, dy, x, w, rstd)
    hint = "With rows of 100 values the gradients are wrong: mask the loads (other=0.0) and stores with cols < n_cols, and divide by n_cols."
    assert_close(dx, dx_ref, hint=hint, what="dx")
    assert_close(dw, dw_ref, hint=hint, what="dweight")


@backward_exercise
def test_rms_norm_through_autograd(impl, rng):
    """Both kernels through the given launchers and autograd wrapper, in float16."""
    mod = impl.load(TOPIC)
    x = _rand(rng, 2, 3, 48, dtype=torch.float16, shift=0.5).requires_grad_()
    w = _rand(rng, 48, dtype=torch.float16).requires_grad_()
    dy = _rand(rng, 2, 3, 48, dtype=torch.float16)
    x2, w2, dy2 = x.detach().reshape(6, 48), w.detach(), dy.reshape(6, 48)
    _forward(mod, x2, w2)  # first with guarded outputs: a stray store fails there, safely
    _backward(mod, dy2, x2, w2, _reference(x2, w2)[1])
    y = mod.rms_norm(x, w, EPS)
    assert y.dtype == torch.float16 and y.shape == x.shape, f"rms_norm of float16 (2, 3, 48) must be float16 (2, 3, 48), got {y.dtype} {tuple(y.shape)}."
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    dx_ref, dw_ref, _ = _backward_reference(dy2, x2, w2)
    hint = "rms_norm through autograd is wrong although the kernels pass the tests above: the given launchers pass (M, N) views of x; check your kernels with other shapes."
    assert_close(y, _reference(x2, w2)[0].view(2, 3, 48), hint=hint, what="y")
    assert_close(dx, dx_ref.view(2, 3, 48), hint=hint, what="dx")
    assert_close(dw, dw_ref, hint=hint, what="dweight", atol=1e-2, rtol=1e-2)
