"""A linear layer on the Triton matmul kernel, forward and backward.

    y = x @ weight.T + bias        x (..., K), weight (N, K), bias (N,) -> y (..., N)

The weight is stored as in ``nn.Linear`` and Hugging Face models: one row per
output feature. ``weight.T`` is only a view with swapped strides, and the
matmul kernel reads it in place, so nothing is copied or transposed in memory.
The bias is added inside the kernel, before the result is rounded to the
output dtype (a fused "epilogue": no second pass over y).

The backward pass is three more matrix products, all through the same kernel
(M = the number of rows of x once its leading dimensions are flattened):

    dx      = dy @ weight        (M, N) @ (N, K) -> (M, K)
    dweight = dy.T @ x           (N, M) @ (M, K) -> (N, K)
    dbias   = dy.sum(0)                          -> (N,)

so a linear layer costs 2*M*N*K FLOPs forward and 4*M*N*K backward.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_same_dtype, check_tensors  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.matmul import launch_matmul  # noqa: E402

OP = "linear"


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    contract.linear(x, weight, bias)  # the op's check: shapes that agree, one device, float dtypes
    check_tensors(OP, x=x, weight=weight, bias=bias)  # and the kernel's own: a device Triton runs on, a dtype it supports
    # The kernel multiplies inputs of one dtype. The op's check asks for one only outside autocast
    # (under autocast llm_course.ops casts the inputs to autocast's dtype first); a direct call is not cast.
    if torch.is_autocast_enabled(x.device.type):
        check_same_dtype(OP, x=x, weight=weight, bias=bias)


class LinearFunction(torch.autograd.Function):
    """y = x @ weight.T + bias for a 2-D x (M, K); every product through the Triton matmul."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return launch_matmul(x, weight.T, bias)  # (M, K) @ (K, N) + bias -> (M, N)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors  # (M, K), (N, K)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = launch_matmul(dy, weight)  # (M, N) @ (N, K) -> (M, K)
        if ctx.needs_input_grad[1]:
            dweight = launch_matmul(dy.T, x)  # (N, M) @ (M, K) -> (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = dy.sum(dim=0, dtype=torch.float32).to(dy.dtype)  # (N,), summed in float32
        return dx, dweight, dbias


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` through the Triton matmul. x (..., K), weight (N, K), bias (N,) -> (..., N)."""
    _check(x, weight, bias)  # once, here (launch_matmul, public too, still checks what its kernel needs)
    lead = x.shape[:-1]
    x2d = x.reshape(lead.numel(), x.shape[-1])  # (M, K), M = product of the leading dimensions (K may be 0)
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        y = custom_ops.linear(x2d, weight, bias)  # (M, N)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        y = LinearFunction.apply(x2d, weight, bias)  # (M, N)
    else:
        y = launch_matmul(x2d, weight.T, bias)  # no graph to record: skip autograd's bookkeeping
    return y.reshape(*lead, weight.shape[0])  # (..., N)
