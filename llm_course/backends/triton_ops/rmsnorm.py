"""RMSNorm forward and backward in Triton (the Liger-Kernel / Triton-tutorial structure).

    y = x * rstd * weight,     rstd = 1 / sqrt(mean(x**2) + eps)     per row of x (M, N)

Forward: one program per row, the whole row in registers. It reads x once,
writes y once, and also writes ``rstd`` (M,) in float32 -- 4 bytes a row --
so that the backward does not recompute it.

Backward, with ``x_hat = x * rstd`` and ``g = dy * weight``:

    dx      = rstd * (g - x_hat * mean(g * x_hat))      per row: like the forward
    dweight = sum over the M rows of dy * x_hat         a reduction over rows

dweight sums over *rows*, which are spread over programs. Rather than having M
programs fight over one (N,) buffer with atomics, the backward launches about
as many programs as the GPU runs at once; each one loops over its own block of
rows, keeps a partial dweight in float32 registers, and writes it as one row of
a (num_programs, N) buffer. A final ``.sum(0)`` over that small buffer gives
dweight. The weight is loaded once per program, not once per row.

Dtypes: x float32, float16 or bfloat16 (GPU only); weight any of those; y and
dx in x's dtype, dweight in weight's; statistics and sums in float32. float64
is refused. Rows up to ``MAX_FUSED_SIZE`` elements (a row must fit in
registers); x of any leading shape is seen as (M, N) rows.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensors  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.launch import (  # noqa: E402
    as_rows, backward_programs, backward_stages, block_config, from_rows, last_dim_contiguous,
)
from llm_course.backends.triton_ops.launch_cache import launch  # noqa: E402

OP = "rms_norm"
MAX_FUSED_SIZE = 65536  # longest row (elements) kept in registers


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def rmsnorm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr, x_row_stride, y_row_stride, n_cols, eps, BLOCK_SIZE: tl.constexpr
):
    """One program = one row. x, y (M, N) rows with stride 1 along N; w (N,); rstd (M,) float32."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)  # padding is 0: adds nothing to the sum
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * y_row_stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rmsnorm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr,
    dy_row_stride, x_row_stride, dx_row_stride,
    n_rows, n_cols, rows_per_program, BLOCK_SIZE: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Program p: dx for rows [p * rows_per_program, ...) and their partial dweight -> dw_partial[p, :]."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)  # this program's partial dweight
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in tl.range(row_start, row_end, num_stages=NUM_STAGES):  # row is int64: no overflow in row * stride
        dy = tl.load(dy_ptr + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        x_hat = x * rstd
        g = dy * w
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n_cols))
        tl.store(dx_ptr + row * dx_row_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * x_hat
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=mask)


# --- launchers ---------------------------------------------------------------------------


def _check(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    contract.rms_norm(x, weight, eps)  # the op's check: shapes that agree, one device, float dtypes, eps
    check_tensors(OP, x=x, weight=weight)  # and the kernels' own: a device Triton runs on, a dtype they support


def rmsnorm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, N), weight (N,) -> y (M, N) in x's dtype, rstd (M,) float32. Inputs checked by :func:`rms_norm`."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y, rstd.fill_(eps**-0.5 if eps > 0 else float("inf"))
    block, num_warps = block_config(OP, N, MAX_FUSED_SIZE)
    launch(
        rmsnorm_fwd_kernel, (M,), x, last_dim_contiguous(weight), y, rstd, x.stride(0), y.stride(0), N, eps,
        BLOCK_SIZE=block, num_warps=num_warps,
    )  # fmt: skip
    return y, rstd


def rmsnorm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dy, x (M, N); weight (N,); rstd (M,) from the forward -> dx (M, N) in x's dtype, dweight (N,) in weight's.

    dy comes from autograd, which gives it y's shape, dtype and device: it is not checked again.
    """
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return dx, torch.zeros_like(weight)
    block, num_warps = block_config(OP, N, MAX_FUSED_SIZE)
    programs, rows_per_program = backward_programs(M, num_warps, x.device)
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    launch(
        rmsnorm_bwd_kernel, (programs,), dy, x, last_dim_contiguous(weight), rstd, dx, dw_partial,
        dy.stride(0), x.stride(0), dx.stride(0),
        M, N, rows_per_program, BLOCK_SIZE=block, NUM_STAGES=backward_stages(block, x.element_size()),
        num_warps=num_warps,
    )  # fmt: skip
    return dx, dw_partial.sum(dim=0).to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x2 = as_rows(x)  # (M, N)
        y, rstd = rmsnorm_forward(x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        return from_rows(y, x.shape)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rmsnorm_backward(as_rows(dy), x2, weight, rstd)
        return from_rows(dx, dy.shape), dw, None


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim with the Triton kernels; differentiable. x (..., N), weight (N,)."""
    _check(x, weight, eps)  # once, here: the launchers trust their inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.rms_norm(x, weight, eps)
    return RMSNormFunction.apply(x, weight, eps)
