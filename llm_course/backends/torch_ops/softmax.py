"""Softmax over the last dimension, written out step by step.

For one row ``x`` of length N::

    softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m)      m = max_j x_j

Subtracting the row max ``m`` changes nothing mathematically (it cancels in
the ratio) but keeps every ``exp`` at most 1: without it, ``exp(100.)`` is
already inf in float32 and the row becomes NaN.

Written with separate torch ops, as below, each step is one pass over memory
(on a GPU, one kernel each):

    1. m = x.max(-1)           read x                  (M, N) -> (M, 1)
    2. e = exp(x - m)          read x, write e         (M, N)
    3. s = e.sum(-1)           read e                  (M, N) -> (M, 1)
    4. y = e / s               read e, write y         (M, N)

That is 4 reads and 2 writes of an (M, N) tensor where a fused kernel needs 1
read and 1 write (``llm_course/backends/triton_ops/softmax.py``).
"""

from __future__ import annotations

import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Numerically stable softmax over the last dim. (..., N) -> (..., N), same dtype.

    Computed in float32 (float64 stays float64) and cast back, like the Triton kernel.
    Rows of no element (N = 0) give an empty result: there is nothing to normalize.
    """
    if x.shape[-1] == 0:  # amax over an empty row is an error; the softmax of nothing is nothing
        return x.clone()
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    m = xc.amax(dim=-1, keepdim=True)  # (..., 1)
    e = torch.exp(xc - m)  # (..., N), every value in [0, 1]
    s = e.sum(dim=-1, keepdim=True)  # (..., 1), at least 1
    return (e / s).to(x.dtype)


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Gradient of softmax from its output: ``dx = y * (dy - sum(dy * y))`` per row.

    Derivation: dy_j/dx_i = y_j (delta_ij - y_i), so
    dx_i = sum_j dy_j y_j (delta_ij - y_i) = y_i dy_i - y_i sum_j dy_j y_j.
    Only the output ``y`` is needed, not the input: that is what the kernels save.
    """
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    y32, dy32 = y.to(compute), dy.to(compute)
    dot = (dy32 * y32).sum(dim=-1, keepdim=True)  # (..., 1)
    return (y32 * (dy32 - dot)).to(y.dtype)
