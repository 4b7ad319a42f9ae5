"""Elementwise add: the first Triton kernel.

How a GPU runs it. The output's ``n`` elements are cut into blocks of
``BLOCK_SIZE``; one *program* (a group of GPU threads) handles one block, and
the GPU runs thousands of programs side by side. Every program runs the same
code and tells itself apart by ``tl.program_id(0)``:

    program 0: elements [0, BLOCK_SIZE)
    program 1: elements [BLOCK_SIZE, 2 * BLOCK_SIZE)
    ...
    last program: the tail, which may be shorter than a block -> a *mask*

``tl.load(ptr + offsets, mask=mask)`` reads a whole block at once (the compiler
spreads it over the threads and issues wide, vectorized loads); elements where
``mask`` is False are neither read nor written. Without the mask the last
program would read and write past the end of the tensors.

Memory traffic: 2 reads + 1 write, ``3 * n * element_size`` bytes, and 1 FLOP
per element. The GPU can do ~300 FLOPs in the time it moves one byte, so this
kernel only waits for memory: its speed is measured in GB/s, not FLOP/s.

Layers: ``add_kernel`` (the kernel), ``add_forward`` (the launcher), ``AddFunction``
(autograd), ``add`` (the registry's signature). ``add`` and ``add_forward`` are public:
each checks its inputs once, before any launch (``_check``); ``AddFunction`` launches
inputs ``add`` has checked.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_tensor, check_tensors  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.launch import cdiv  # noqa: E402

OP = "add"
BLOCK_SIZE = 1024  # elements per program: 4 warps x 32 threads x 8 elements
NUM_WARPS = 4


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK_SIZE: tl.constexpr):
    """out[i] = x[i] + y[i] for the block of elements this program owns. x, y, out: (n,) contiguous."""
    pid = tl.program_id(axis=0).to(tl.int64)  # int64: offsets of tensors with more than 2**31 elements
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)  # (BLOCK_SIZE,)
    mask = offsets < n  # False past the end, in the last block only
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    contract.add(x, y)  # the op's check: tensors of one shape, dtype and device, floating point
    check_tensors(OP, x=x, y=y)  # and the kernel's own: a device Triton runs on, a dtype it supports


def add_forward(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Check the inputs, then launch ``add_kernel`` on ``cdiv(n, BLOCK_SIZE)`` programs.

    x, y: same shape and dtype (float32, float16, bfloat16; bfloat16 on a GPU only).
    Non-contiguous inputs are copied to contiguous ones first. ``out`` (optional,
    contiguous, same shape and dtype) receives the result.
    """
    _check(x, y)
    if out is not None:
        check_tensor(OP, "out", out, contiguous=True)
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"{OP}: out must have x's shape {tuple(x.shape)}, dtype and device")
    return _launch(x, y, out)


def _launch(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``add_forward`` without the checks: for inputs already checked."""
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x, y = x.contiguous(), y.contiguous()  # no copy when already contiguous
    n = x.numel()
    if n == 0:
        return out
    grid = (cdiv(n, BLOCK_SIZE),)
    add_kernel[grid](x, y, out, n, BLOCK_SIZE=BLOCK_SIZE, num_warps=NUM_WARPS)
    return out


class AddFunction(torch.autograd.Function):
    """d(x + y)/dx = d(x + y)/dy = 1: the gradient flows through unchanged."""

    @staticmethod
    def forward(ctx, x, y):
        return _launch(x, y)  # checked by add

    @staticmethod
    def backward(ctx, dout):
        return dout, dout


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` (same shape) with the Triton kernel; differentiable."""
    _check(x, y)  # once, here: AddFunction trusts its inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.add(x, y)
    return AddFunction.apply(x, y)
