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

from llm_course.backends.triton_ops.checks import check_same_device, check_same_dtype, check_tensor  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.matmul import launch_matmul  # noqa: E402

OP = "linear"


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_tensor(OP, "x", x)
    check_tensor(OP, "weight", weight, ndim=2)
    if bias is not None:
        check_tensor(OP, "bias", bias, ndim=1)
    check_same_device(OP, x=x, weight=weight, bias=bias)
    check_same_dtype(OP, x=x, weight=weight, bias=bias)
    if x.dim() == 0:
        raise ValueError(f"{OP}: x must have at least one dimension (its features), got a scalar")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"{OP}: x has {x.shape[-1]} features (last dimension) but weight {tuple(weight.shape)} expects {K}")
    if bias is not None and bias.shape[0] != N:
        raise ValueError(f"{OP}: bias has shape {tuple(bias.shape)}, expected ({N},) for weight {tuple(weight.shape)}")


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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` through the Triton matmul. x (..., K), weight (N, K), bias (N,) -> (..., N)."""
    _check(x, weight, bias)
    lead = x.shape[:-1]
    x2d = x.reshape(lead.numel(), x.shape[-1])  # (M, K), M = product of the leading dimensions (K may be 0)
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        y = custom_ops.linear(x2d, weight, bias)  # (M, N)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        y = LinearFunction.apply(x2d, weight, bias)  # (M, N)
    else:
        y = launch_matmul(x2d, weight.T, bias)  # no graph to record: skip autograd's bookkeeping
    return y.reshape(*lead, weight.shape[0])  # (..., N)
