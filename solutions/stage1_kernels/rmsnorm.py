"""Stage 1 exercises: RMSNorm forward and backward kernels.

RMSNorm of a row x of length N, with a learned weight (N,):

    rstd = 1 / sqrt(mean(x**2) + eps)          one number per row (eps INSIDE the sqrt)
    y    = x * rstd * weight

Backward, with ``x_hat = x * rstd`` and ``g = dy * weight``:

    dx      = rstd * (g - x_hat * mean(g * x_hat))     per row
    dweight = sum over all rows of dy * x_hat

Write two kernels:

* ``rmsnorm_fwd_kernel``  (exercise rmsnorm_forward): one program per row, like
  your softmax; it also saves rstd, in float32, for the backward.
* ``rmsnorm_bwd_kernel``  (exercise rmsnorm_backward): dx row by row, and the
  dweight *reduction over rows*: each program loops over a block of rows,
  adds up its part of dweight in float32 registers, and writes that partial sum
  as one row of a (num_programs, N) buffer; the launcher sums the buffer.

Given: the launchers ``rmsnorm_forward`` and ``rmsnorm_backward``, the autograd
wrapper ``RMSNormFunction``, and ``rms_norm``, which ``llm_course.ops.rms_norm``
(and so ``llm_course.models.components.norms.RMSNorm``) calls under
``use_backend("exercises")``.

Notebook ``01a_first_triton_kernels`` walks through it; the course's version is
in ``llm_course/backends/triton_ops/rmsnorm.py`` (look there only once you are done).
Check your work with ``llm-course grade 1``.
"""

from __future__ import annotations

from llm_course.device import configure_triton, is_interpreter

configure_triton()  # before importing triton: without a GPU, kernels run in Triton's interpreter

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_tensor  # noqa: E402
from llm_course.grading import require_written  # noqa: E402

OP = "rms_norm (exercise)"
MAX_BLOCK_SIZE = 65536  # longest row kept in one block


@triton.jit
def rmsnorm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr, x_row_stride, y_row_stride, n_cols, eps, BLOCK_SIZE: tl.constexpr
):
    """y[row, :] = x[row, :] * rstd * w, and rstd[row] = rstd, for the row this program owns.

    Args:
        x_ptr, y_ptr: x (M, N) and y (M, N), stride 1 along a row; rows start
            ``x_row_stride`` / ``y_row_stride`` elements apart.
        w_ptr: the weight (N,).
        rstd_ptr: rstd (M,), float32: write ``1 / sqrt(mean(x**2) + eps)`` of the row.
        n_cols: N.  eps: a small float.  BLOCK_SIZE: a power of two >= N.

    Steps:
        1. Load the row (masked, ``other=0.0``) and the weight, both ``.to(tl.float32)``.
        2. ``rstd = 1 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)``: divide by N, not
           by BLOCK_SIZE (the zeros of the padding add nothing to the sum).
        3. Store rstd at ``rstd_ptr + row``, and ``x * rstd * w`` (converted with
           ``.to(y_ptr.dtype.element_ty)``) at the row of y, masked.
    """
    # BEGIN EXERCISE rmsnorm_forward
    # stub raises: "rmsnorm_fwd_kernel: load a row, rstd = 1 / sqrt(mean(x**2) + eps), store rstd and x * rstd * w"
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * y_row_stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    # END EXERCISE rmsnorm_forward


@triton.jit
def rmsnorm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows, n_cols, rows_per_program, BLOCK_SIZE: tl.constexpr
):
    """dx for rows [pid * rows_per_program, (pid + 1) * rows_per_program), and their part of dweight.

    Args:
        dy_ptr, x_ptr, dx_ptr: dy, x, dx (M, N), contiguous: row ``r`` starts at ``r * n_cols``.
        w_ptr: the weight (N,).  rstd_ptr: rstd (M,), float32, saved by the forward.
        dw_partial_ptr: a (num_programs, N) float32 buffer: program ``pid`` writes row ``pid``.
        n_rows: M.  n_cols: N.  rows_per_program: how many rows each program handles
            (the last program may have fewer: stop at ``n_rows``).
        BLOCK_SIZE: a power of two >= N.

    Steps:
        1. ``pid = tl.program_id(0)``; load the weight once (float32); start a partial
           dweight ``dw = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)``.
        2. For each of this program's rows (``for row in range(start, end)``, with
           ``end = tl.minimum(start + rows_per_program, n_rows)``): load dy, x (float32)
           and rstd; ``x_hat = x * rstd``; ``g = dy * w``;
           ``dx = rstd * (g - x_hat * tl.sum(g * x_hat, axis=0) / n_cols)``; store dx
           (in dx's dtype, masked); and ``dw += dy * x_hat``.
        3. After the loop, store ``dw`` at ``dw_partial_ptr + pid * n_cols + cols`` (masked).
    """
    # BEGIN EXERCISE rmsnorm_backward
    # stub raises: "rmsnorm_bwd_kernel: loop over this program's rows, store dx, accumulate dw, store the partial dw"
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in range(row_start, row_end):
        offsets = row * n_cols + cols
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        x_hat = x * rstd
        g = dy * w
        dx = rstd * (g - x_hat * tl.sum(g * x_hat, axis=0) / n_cols)
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * x_hat
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=mask)
    # END EXERCISE rmsnorm_backward


def _block(n_cols: int) -> tuple[int, int]:
    """Given: (BLOCK_SIZE, num_warps) for rows of n_cols elements."""
    block = triton.next_power_of_2(n_cols)
    if block > MAX_BLOCK_SIZE:
        raise ValueError(f"{OP}: rows of {n_cols} elements do not fit in one block (at most {MAX_BLOCK_SIZE})")
    return block, 16 if block >= 8192 else 8 if block >= 4096 else 4


def rmsnorm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Given: x (M, N) (rows with stride 1 along N), weight (N,) -> y (M, N) in x's dtype, rstd (M,) float32."""
    check_tensor(OP, "x", x, ndim=2)
    check_tensor(OP, "weight", weight, ndim=1)
    check_same_device(OP, x=x, weight=weight)
    M, N = x.shape
    if weight.shape[0] != N:
        raise ValueError(f"{OP}: weight has shape {tuple(weight.shape)} but x has {N} columns; they must match")
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    require_written(rmsnorm_fwd_kernel)
    if M > 0 and N > 0:
        block, num_warps = _block(N)
        rmsnorm_fwd_kernel[(M,)](
            x, weight.contiguous(), y, rstd, x.stride(0), y.stride(0), N, eps, BLOCK_SIZE=block, num_warps=num_warps
        )
    return y, rstd


def rmsnorm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Given: dy, x (M, N); weight (N,); rstd (M,) float32 -> dx (M, N) in x's dtype, dweight (N,) in weight's."""
    check_tensor(OP, "dy", dy, ndim=2)
    check_tensor(OP, "x", x, ndim=2)
    check_tensor(OP, "rstd", rstd, dtypes=(torch.float32,), ndim=1)
    if dy.shape != x.shape or weight.shape != x.shape[1:] or rstd.shape != x.shape[:1]:
        raise ValueError(f"{OP}: shapes don't match: dy {tuple(dy.shape)}, x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}, rstd {tuple(rstd.shape)}")  # fmt: skip
    M, N = x.shape
    dy, x, rstd = dy.contiguous(), x.contiguous(), rstd.contiguous()
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    require_written(rmsnorm_bwd_kernel)
    if M == 0 or N == 0:
        return dx, torch.zeros_like(weight)
    block, num_warps = _block(N)
    # Enough programs to fill the GPU (a few per SM), each looping over its rows; 8 in the interpreter.
    most = 8 if is_interpreter() else 2 * torch.cuda.get_device_properties(x.device).multi_processor_count
    rows_per_program = triton.cdiv(M, min(M, most))
    programs = triton.cdiv(M, rows_per_program)
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)  # one row per program
    rmsnorm_bwd_kernel[(programs,)](
        dy, x, weight.contiguous(), rstd, dx, dw_partial, M, N, rows_per_program, BLOCK_SIZE=block, num_warps=num_warps
    )
    return dx, dw_partial.sum(dim=0).to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    """Given: your forward kernel, rstd saved, your backward kernel."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x2 = x.reshape(-1, x.shape[-1])  # (M, N)
        y, rstd = rmsnorm_forward(x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rmsnorm_backward(dy.reshape(x2.shape), x2, weight, rstd)
        return dx.view(dy.shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Given: RMSNorm over the last dim with your kernels, differentiable (``llm_course.ops.rms_norm``'s signature)."""
    require_written(rmsnorm_fwd_kernel, rmsnorm_bwd_kernel)
    return RMSNormFunction.apply(x, weight, eps)
