"""Stage 1 exercise: a fused softmax kernel, one row per program.

Softmax of a row x of length N: ``exp(x - max(x)) / sum(exp(x - max(x)))``.
Subtracting the row max keeps every ``exp`` at most 1 (``exp(1e4)`` is inf).

The launcher below sees x (..., N) as M rows of N elements and starts M
programs; program ``row`` loads its whole row into registers (a block of
``BLOCK_SIZE``, the power of two at or above N), computes the softmax there
and writes it once. One read and one write of the tensor, where the unfused
torch version makes 6 trips through memory.

Write ``softmax_kernel`` (exercise softmax_kernel). Given: the launcher
``softmax_forward``, the autograd wrapper ``SoftmaxFunction`` (its backward is
written in torch: ``dx = y * (dy - sum(dy * y))``), and ``softmax``, which
``llm_course.ops.softmax`` calls under ``use_backend("exercises")``.

Notebook ``01a_first_triton_kernels`` walks through it; the course's version is
in ``llm_course/backends/triton_ops/softmax.py`` (look there only once you are done).
Check your work with ``llm-course grade 1``.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()  # before importing triton: without a GPU, kernels run in Triton's interpreter

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.torch_ops.softmax import softmax_backward  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensor  # noqa: E402
from llm_course.grading import require_written  # noqa: E402

MAX_BLOCK_SIZE = 65536  # longest row this one-block kernel handles


@triton.jit
def softmax_kernel(x_ptr, y_ptr, x_row_stride, y_row_stride, n_cols, BLOCK_SIZE: tl.constexpr):
    """y[row, :] = softmax(x[row, :]) for the row this program owns.

    Args:
        x_ptr, y_ptr: pointers to x (M, N) and y (M, N); along a row, elements are
            next to each other (stride 1).
        x_row_stride, y_row_stride: how many elements apart two rows start. They
            can differ from N and from each other (x may be a slice of a wider tensor).
        n_cols: N, the row length.
        BLOCK_SIZE: a power of two >= N: the whole row fits in one block.

    Steps:
        1. ``row = tl.program_id(0)``; ``cols = tl.arange(0, BLOCK_SIZE)``; ``mask = cols < n_cols``.
        2. Load the row from ``x_ptr + row * x_row_stride + cols``, masked, with
           ``other=-float("inf")`` where the mask is False, and convert it with ``.to(tl.float32)``.
           (Why -inf: the padding must not win the max, and exp(-inf) = 0 adds nothing to the sum.)
        3. Subtract the row max (``tl.max(x, axis=0)``), take ``tl.exp``, divide by the sum (``tl.sum``).
        4. Store at ``y_ptr + row * y_row_stride + cols``, masked, converted back
           to y's dtype with ``.to(y_ptr.dtype.element_ty)``.
    """
    # BEGIN EXERCISE softmax_kernel
    # stub raises: "softmax_kernel: load one row (masked with -inf), subtract its max, exp, divide by the sum, store"
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    y = e / tl.sum(e, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    # END EXERCISE softmax_kernel


def softmax_forward(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Given: softmax over the last dim of x (..., N) with ``softmax_kernel``. Returns ``out`` (..., N).

    ``out`` (optional, contiguous, x's shape and dtype) receives the result.
    """
    op = "softmax (exercise)"
    check_tensor(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension")
    n_cols = x.shape[-1]
    block = triton.next_power_of_2(n_cols)
    if block > MAX_BLOCK_SIZE:
        raise ValueError(f"{op}: rows of {n_cols} elements do not fit in one block (at most {MAX_BLOCK_SIZE})")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    check_tensor(op, "out", out, contiguous=True)
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"{op}: out must have x's shape {tuple(x.shape)} and dtype")
    require_written(softmax_kernel)
    if x.numel() == 0:
        return out
    x2 = x.reshape(-1, n_cols) if x.dim() != 2 else x  # (M, N), a view when the layout allows
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y2 = out.view(-1, n_cols)  # (M, N)
    num_warps = 16 if block >= 8192 else 8 if block >= 4096 else 4
    softmax_kernel[(x2.shape[0],)](x2, y2, x2.stride(0), y2.stride(0), n_cols, BLOCK_SIZE=block, num_warps=num_warps)
    return out


class SoftmaxFunction(torch.autograd.Function):
    """Given: forward with your kernel; backward in torch from the saved output y."""

    @staticmethod
    def forward(ctx, x):
        y = softmax_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return softmax_backward(y, dy)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Given: softmax over the last dim with your kernel, differentiable (``llm_course.ops.softmax``'s signature)."""
    require_written(softmax_kernel)
    return SoftmaxFunction.apply(x)
