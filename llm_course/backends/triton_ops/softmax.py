"""Softmax over the last dimension, fused into one kernel.

The torch reference (``torch_ops/softmax.py``) runs four kernels and moves the
(M, N) tensor through memory 6 times (4 reads, 2 writes). Here one program owns
one row: it loads the row once into registers, computes the max, the
exponentials and their sum there, and writes the result once:

    bytes moved = 2 * M * N * element_size        (1 read + 1 write)

so it runs up to 3x faster than the unfused version -- softmax is memory-bound,
and fusion is all about not going back to memory.

Long rows. A row must fit in one block of registers. Past ``MAX_FUSED_SIZE``
elements the forward uses a *looped* kernel instead, which walks the row block
by block twice: first to find the max and the sum with the **online softmax**
trick (when the running max grows from m to m', the running sum is rescaled by
exp(m - m')), then to write the outputs. That is 2 reads + 1 write.

Backward: ``dx = y * (dy - sum(dy * y))`` per row (see ``torch_ops/softmax.py``),
also a Triton kernel, fused and looped versions likewise. Only ``y`` is saved.

Dtypes: float32, float16, bfloat16 (GPU only); computed in float32. float64 is
refused (the kernels compute in float32 and would silently lose precision).
Inputs of any leading shape are seen as (M, N) rows; rows only need a last-dim
stride of 1 (a sliced tensor works without a copy).
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
from llm_course.backends.triton_ops.checks import check_same_device, check_tensor  # noqa: E402
from llm_course.backends.triton_ops.launch import as_rows, next_power_of_2, num_warps_for  # noqa: E402

OP = "softmax"
MAX_FUSED_SIZE = 16384  # longest row kept whole in registers (elements)
LOOP_BLOCK_SIZE = 4096  # block size of the looped kernels


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def softmax_fwd_kernel(x_ptr, y_ptr, x_row_stride, y_row_stride, n_cols, BLOCK_SIZE: tl.constexpr):
    """One program = one row of x (M, N), whole in registers. BLOCK_SIZE >= n_cols."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    # -inf past the end: exp(-inf - max) = 0, so the padding adds nothing to the sum
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))  # (BLOCK_SIZE,), every value in [0, 1]
    y = e / tl.sum(e, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_fwd_looped_kernel(x_ptr, y_ptr, x_row_stride, y_row_stride, n_cols, BLOCK_SIZE: tl.constexpr):
    """One program = one row of any length, BLOCK_SIZE elements at a time (online softmax)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    # pass 1: running max m and running sum d = sum exp(x - m) over the blocks seen so far
    m = -float("inf")
    d = 0.0
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        x = tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # rows starting with -inf: avoid inf - inf
        d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)  # rescale the old sum to the new max
        m = m_new
    # pass 2: now that m and d are final, write exp(x - m) / d
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=-float("inf")).to(tl.float32)
        tl.store(y_row + cols, (tl.exp(x - m) / d).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_bwd_kernel(
    y_ptr, dy_ptr, dx_ptr, y_row_stride, dy_row_stride, dx_row_stride, n_cols, BLOCK_SIZE: tl.constexpr
):
    """dx = y * (dy - sum(dy * y)), one row per program, whole in registers."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    y = tl.load(y_ptr + row * y_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    dx = y * (dy - tl.sum(dy * y, axis=0))
    tl.store(dx_ptr + row * dx_row_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_bwd_looped_kernel(
    y_ptr, dy_ptr, dx_ptr, y_row_stride, dy_row_stride, dx_row_stride, n_cols, BLOCK_SIZE: tl.constexpr
):
    """The same for rows of any length: one pass for sum(dy * y), one to write dx."""
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * y_row_stride
    dy_row = dy_ptr + row * dy_row_stride
    dot = 0.0
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        dot += tl.sum(dy * y, axis=0)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * dx_row_stride + cols, (y * (dy - dot)).to(dx_ptr.dtype.element_ty), mask=mask)


# --- launchers ---------------------------------------------------------------------------


def _launch(fused_kernel, looped_kernel, n_rows: int, n_cols: int, max_fused_size: int, *args) -> None:
    block = next_power_of_2(n_cols)
    if block <= max_fused_size:
        fused_kernel[(n_rows,)](*args, n_cols, BLOCK_SIZE=block, num_warps=num_warps_for(block))
    else:
        block = min(LOOP_BLOCK_SIZE, next_power_of_2(max_fused_size))
        looped_kernel[(n_rows,)](*args, n_cols, BLOCK_SIZE=block, num_warps=num_warps_for(block))


def _check(x: torch.Tensor) -> None:
    contract.softmax(x)  # the op's check: a floating-point tensor with a last dimension, holding data
    check_tensor(OP, "x", x)  # and the kernels' own: a device Triton runs on, a dtype they support


def softmax_forward(x: torch.Tensor, max_fused_size: int = MAX_FUSED_SIZE) -> torch.Tensor:
    """Softmax over the last dim. x (..., N) -> y (..., N) contiguous, same dtype.

    Rows longer than ``max_fused_size`` elements go to the looped kernel (lower
    it to try that kernel on short rows).
    """
    _check(x)
    return _forward(x, max_fused_size)


def _forward(x: torch.Tensor, max_fused_size: int = MAX_FUSED_SIZE) -> torch.Tensor:
    """``softmax_forward`` without the checks: for inputs already checked."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2, y2 = as_rows(x), y.view(-1, x.shape[-1])  # (M, N)
    M, N = x2.shape
    _launch(softmax_fwd_kernel, softmax_fwd_looped_kernel, M, N, max_fused_size, x2, y2, x2.stride(0), y2.stride(0))
    return y


def softmax_backward(y: torch.Tensor, dy: torch.Tensor, max_fused_size: int = MAX_FUSED_SIZE) -> torch.Tensor:
    """dx from the forward's output y and the incoming gradient dy, both (..., N)."""
    check_tensor(OP, "dy", dy)
    check_same_device(OP, y=y, dy=dy)
    if dy.shape != y.shape:
        raise ValueError(f"{OP}: dy has shape {tuple(dy.shape)}, expected {tuple(y.shape)}")
    dx = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if y.numel() == 0:
        return dx
    y2, dy2, dx2 = as_rows(y), as_rows(dy), dx.view(-1, y.shape[-1])
    M, N = y2.shape
    _launch(
        softmax_bwd_kernel, softmax_bwd_looped_kernel, M, N, max_fused_size,
        y2, dy2, dx2, y2.stride(0), dy2.stride(0), dx2.stride(0),
    )  # fmt: skip
    return dx


class SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = _forward(x)  # checked by softmax
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return softmax_backward(y, dy)


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension with the Triton kernels; differentiable. (..., N) -> (..., N)."""
    _check(x)  # once, here: SoftmaxFunction's forward trusts its input
    return SoftmaxFunction.apply(x)
