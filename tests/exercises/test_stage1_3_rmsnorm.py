"""Graded tests of stage 1: the RMSNorm kernels (exercises/stage1_kernels/rmsnorm.py).

Forward: y and the saved rstd against float64, on inputs aimed at the usual
mistakes (mean instead of mean of squares, eps missing or outside the square
root, weight not applied, row strides, rows not a power of two). Backward: dx
and dweight against float64 autograd, given the exact rstd, with several rows
per program so that the reduction over rows is really tested.

Inputs sit at the start of larger buffers (a stray read stays in memory the test owns).
"""

from __future__ import annotations

import pytest
import torch

from llm_course.device import get_device, has_gpu
from llm_course.grading.checks import assert_close

TOPIC = "stage1_kernels/rmsnorm"
PAD = 4096
EPS = 1e-5

forward_exercise = pytest.mark.exercise("rmsnorm_forward", stage=1, points=3, title="Triton: RMSNorm forward")
backward_exercise = pytest.mark.exercise("rmsnorm_backward", stage=1, points=4, title="Triton: RMSNorm backward")


def _rand(rng, *shape, dtype=torch.float32, scale=1.0, shift=0.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=rng) * scale + shift).to(dtype).to(get_device())


def _padded(values: torch.Tensor) -> torch.Tensor:
    """A contiguous view with ``values`` at the start of a larger buffer (stray reads stay inside)."""
    buf = torch.zeros(values.numel() + PAD, dtype=values.dtype, device=values.device)
    view = buf[: values.numel()].view(values.shape)
    view.copy_(values)
    return view


def _reference(x: torch.Tensor, w: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 y (M, N) and rstd (M,)."""
    x64, w64 = x.double().cpu(), w.double().cpu()
    rstd = torch.rsqrt(x64.pow(2).mean(dim=-1) + eps)
    return x64 * rstd[:, None] * w64, rstd


def _forward(mod, x, w, eps=EPS):
    y, rstd = mod.rmsnorm_forward(_padded(x) if x.is_contiguous() else x, w, eps)
    assert y.shape == x.shape and rstd.shape == x.shape[:1], "rmsnorm_forward must return y (M, N) and rstd (M,)."
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
    assert y.dtype == torch.float16 and rstd.dtype == torch.float32, (
        f"For float16 x, y must be float16 and rstd float32; got {y.dtype} and {rstd.dtype}."
    )
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
    dx, dw = mod.rmsnorm_backward(_padded(dy), _padded(x), w, rstd.float().to(x.device))
    assert dx.shape == x.shape and dw.shape == w.shape, "rmsnorm_backward must return dx (M, N) and dweight (N,)."
    return dx, dw


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
    M = 2000 if has_gpu() else 37  # several rows for each program, the last program with fewer
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
    assert dx.dtype == dtype and dw.dtype == dtype, f"dx and dweight must be {dtype} for {dtype} inputs."
    hint = "With rows of 100 values the gradients are wrong: mask the loads (other=0.0) and stores with cols < n_cols, and divide by n_cols."
    assert_close(dx, dx_ref, hint=hint, what="dx")
    assert_close(dw, dw_ref, hint=hint, what="dweight")
