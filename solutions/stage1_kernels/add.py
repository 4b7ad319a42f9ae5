"""Stage 1 exercise: your first Triton kernel, an elementwise add.

A Triton kernel is a Python function decorated with ``@triton.jit`` that one
*program* runs on one *block* of the data. The launcher below starts
``cdiv(n, BLOCK_SIZE)`` programs; program ``pid`` owns the elements
``[pid * BLOCK_SIZE, (pid + 1) * BLOCK_SIZE)``. The last block usually runs
past the end of the tensors: a *mask* keeps it from reading or writing there.

Write ``add_kernel`` (exercise add_kernel). Everything else here is given: the
launcher ``add_forward`` (checks the inputs, allocates the output, launches),
the autograd wrapper ``AddFunction``, and ``add``, which ``llm_course.ops.add``
calls under ``use_backend("exercises")``.

Notebook ``01a_first_triton_kernels`` walks through it; the course's version is
in ``llm_course/backends/triton_ops/add.py`` (look there only once you are done).
Check your work with ``llm-course grade 1``.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()  # before importing triton: without a GPU, kernels run in Triton's interpreter

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.grading import require_written  # noqa: E402

BLOCK_SIZE = 1024


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK_SIZE: tl.constexpr):
    """out[i] = x[i] + y[i] for the BLOCK_SIZE elements this program owns.

    Args:
        x_ptr, y_ptr, out_ptr: pointers to the first element of three contiguous
            tensors of ``n`` elements each (same dtype).
        n: the number of elements.
        BLOCK_SIZE: elements per program (a power of two, known at compile time).

    Steps:
        1. ``pid = tl.program_id(axis=0)``: which block this program owns.
        2. ``offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)``: the indices of its elements.
        3. ``mask = offsets < n``: False for indices past the end (last block only).
        4. Load x and y at ``ptr + offsets`` with ``mask=mask``, add, and store
           the sum at ``out_ptr + offsets`` with the same mask.

    Hint: ``tl.load(ptr + offsets, mask=mask)`` and ``tl.store(ptr + offsets, value, mask=mask)``.
    A store without the mask writes past the end of ``out``; the tests check that.
    """
    # BEGIN EXERCISE add_kernel
    # stub raises: "add_kernel: offsets of this program's block, a mask, load x and y, store x + y"
    pid = tl.program_id(axis=0)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)
    # END EXERCISE add_kernel


def add_forward(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Given: check x and y (same shape and dtype), then launch ``add_kernel``. Returns ``out``.

    ``out`` (optional, contiguous, x's shape and dtype) receives the result.
    """
    op = "add (exercise)"
    check_tensor(op, "x", x)
    check_tensor(op, "y", y)
    check_same_device(op, x=x, y=y)
    check_same_dtype(op, x=x, y=y)
    if x.shape != y.shape:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}; they must match")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    check_tensor(op, "out", out, contiguous=True)
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"{op}: out must have x's shape {tuple(x.shape)} and dtype")
    x, y = x.contiguous(), y.contiguous()
    n = x.numel()
    require_written(add_kernel)
    if n > 0:
        add_kernel[(triton.cdiv(n, BLOCK_SIZE),)](x, y, out, n, BLOCK_SIZE=BLOCK_SIZE)
    return out


class AddFunction(torch.autograd.Function):
    """Given: the gradient of x + y flows to x and to y unchanged."""

    @staticmethod
    def forward(ctx, x, y):
        return add_forward(x, y)

    @staticmethod
    def backward(ctx, dout):
        return dout, dout


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Given: ``x + y`` with your kernel, differentiable (the signature of ``llm_course.ops.add``)."""
    require_written(add_kernel)
    return AddFunction.apply(x, y)
