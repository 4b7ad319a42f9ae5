"""LayerNorm forward and backward in Triton: RMSNorm's structure, plus a mean and a bias.

    y = (x - mean) * rstd * weight + bias,   rstd = 1 / sqrt(var + eps)    per row of x (M, N)

(GPT-2 uses it; ``var`` is the biased variance, mean((x - mean)**2), as in torch.)

Forward: one program per row, whole row in registers; saves ``mean`` and
``rstd`` (M,) in float32. Backward, with ``x_hat = (x - mean) * rstd`` and
``g = dy * weight``:

    dx      = rstd * (g - x_hat * mean(g * x_hat) - mean(g))     per row
    dweight = sum over rows of dy * x_hat
    dbias   = sum over rows of dy

The two extra terms of dx come from every x_i also moving the row's mean and
variance. dweight and dbias are reduced like RMSNorm's dweight
(``rmsnorm.py``): each program loops over a block of rows and writes its partial
sums as one row of a (2, num_programs, N) float32 buffer (dweight's, dbias's); one
``.sum()`` at the end reduces both, one small kernel instead of two.

The launchers keep the host's work per call small: every PyTorch call from Python
(an allocation, a view, a cast) costs microseconds of the host's time, which a
training loop pays at every layer. So the kernel finds dbias's half of the buffer
itself (one pointer passed, not two views), the two sums are cast in one call, and
a weight that is already contiguous is passed as it is.

Means are sums times ``inv_n = 1 / N``, computed on the host: a division on
the GPU is approximate (within 2 ulp), and rows of (nearly) equal values, whose
``rstd`` is about ``1 / sqrt(eps)``, magnify any error of ``x - mean`` a few
hundred times.

``bias`` may be None (``HAS_BIAS`` is then False and the kernel skips it: a
constexpr makes it a different compiled kernel, with no runtime branch).
Dtypes and row lengths as in ``rmsnorm.py``.
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

OP = "layer_norm"
MAX_FUSED_SIZE = 65536  # longest row (elements) kept in registers, as in rmsnorm.py


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def normalize_row(x, mask, inv_n, eps, CENTERED: tl.constexpr):
    """One row x (BLOCK_SIZE,) in float32, 0 in the padding -> (x - mean) * rstd, mean, rstd.

    ``CENTERED=False`` is RMSNorm's case: mean 0, rstd = 1 / sqrt(mean(x**2) + eps).
    (Shared with the fused add-and-norm, ``add_norm.py``.)
    """
    if CENTERED:
        mean = tl.sum(x, axis=0) * inv_n
        xm = tl.where(mask, x - mean, 0.0)  # the padding must stay 0 in the variance
    else:
        xm = x
    rstd = tl.rsqrt(tl.sum(xm * xm, axis=0) * inv_n + eps)
    if not CENTERED:
        mean = rstd * 0.0  # 0, as a float32 scalar like the centered case's (a helper returns tensors)
    return xm * rstd, mean, rstd


@triton.jit
def norm_row_backward(dy, x_hat, w, rstd, inv_n, CENTERED: tl.constexpr):
    """dx of one row: rstd * (g - x_hat * mean(g * x_hat) - mean(g)), g = dy * w (the last term if CENTERED).

    dy, x_hat, w (BLOCK_SIZE,) float32, 0 in the padding. (Shared with ``add_norm.py``.)
    """
    g = dy * w
    dx_hat = g - x_hat * (tl.sum(g * x_hat, axis=0) * inv_n)
    if CENTERED:
        dx_hat -= tl.sum(g, axis=0) * inv_n
    return rstd * dx_hat


@triton.jit
def layernorm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, x_row_stride, y_row_stride, n_cols, inv_n, eps,
    HAS_BIAS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    """One program = one row. x, y (M, N); w, b (N,); mean, rstd (M,) float32; inv_n = 1 / N."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    x_hat, mean, rstd = normalize_row(x, mask, inv_n, eps, True)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)
    y = x_hat * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def layernorm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, partial_ptr,
    dy_row_stride, x_row_stride, dx_row_stride, n_rows, n_cols, inv_n, rows_per_program,
    HAS_BIAS: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Program p: dx for its block of rows, and their partial dweight (and dbias) -> row p of the buffers.

    ``partial`` is (1 or 2, num_programs, N) float32: dweight's rows, then dbias's."""
    pid = tl.program_id(0).to(tl.int64)
    dw_partial_ptr = partial_ptr
    db_partial_ptr = partial_ptr + tl.num_programs(0) * n_cols
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    db = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in tl.range(row_start, row_end, num_stages=NUM_STAGES):
        dy = tl.load(dy_ptr + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        x_hat = tl.where(mask, (x - mean) * rstd, 0.0)
        dx = norm_row_backward(dy, x_hat, w, rstd, inv_n, True)
        tl.store(dx_ptr + row * dx_row_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * x_hat
        if HAS_BIAS:
            db += dy
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(db_partial_ptr + pid * n_cols + cols, db, mask=mask)


# --- launchers ---------------------------------------------------------------------------


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> None:
    contract.layer_norm(x, weight, bias, eps)  # the op's check: shapes that agree, one device, float dtypes, eps
    check_tensors(OP, x=x, weight=weight, bias=bias)  # and the kernels' own: a device Triton runs on, a dtype they support


def layernorm_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, N), weight and bias (N,) -> y (M, N) in x's dtype, mean (M,), rstd (M,) float32."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:  # rows of no elements: mean 0, rstd as for a variance of 0
        return y, mean.zero_(), rstd.fill_(eps**-0.5 if eps > 0 else float("inf"))
    block, num_warps = block_config(OP, N, MAX_FUSED_SIZE)
    w = last_dim_contiguous(weight)
    b = last_dim_contiguous(bias) if bias is not None else w  # (no bias: any pointer; HAS_BIAS=False never reads it)
    launch(
        layernorm_fwd_kernel, (M,), x, w, b, y, mean, rstd, x.stride(0), y.stride(0), N, 1.0 / N, eps,
        HAS_BIAS=bias is not None, BLOCK_SIZE=block, num_warps=num_warps,
    )  # fmt: skip
    return y, mean, rstd


def layernorm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dy, x (M, N); weight, bias (N,) or None; mean, rstd (M,) -> dx (M, N), dweight (N,), dbias (N,) or None.

    dy comes from autograd, which gives it y's shape, dtype and device: it is not checked again.
    """
    has_bias = bias is not None
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return dx, torch.zeros_like(weight), torch.zeros_like(bias) if has_bias else None
    block, num_warps = block_config(OP, N, MAX_FUSED_SIZE)
    programs, rows_per_program = backward_programs(M, num_warps, x.device)
    # partial sums: [0] dweight, [1] dbias, one row per program; one .sum() reduces both
    partial = torch.empty((2 if has_bias else 1, programs, N), dtype=torch.float32, device=x.device)
    launch(
        layernorm_bwd_kernel, (programs,), dy, x, last_dim_contiguous(weight), mean, rstd, dx, partial,
        dy.stride(0), x.stride(0), dx.stride(0), M, N, 1.0 / N, rows_per_program,
        HAS_BIAS=has_bias, BLOCK_SIZE=block, NUM_STAGES=backward_stages(block, x.element_size()),
        num_warps=num_warps,
    )  # fmt: skip
    sums = partial.sum(dim=1)  # (2 or 1, N) float32
    if has_bias and bias.dtype == weight.dtype:
        dw, db = sums.to(weight.dtype).unbind(0)  # one cast for both
        return dx, dw, db
    return dx, sums[0].to(weight.dtype), sums[1].to(bias.dtype) if has_bias else None


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x2 = as_rows(x)  # (M, N)
        y, mean, rstd = layernorm_forward(x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        return from_rows(y, x.shape)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = layernorm_backward(as_rows(dy), x2, weight, bias, mean, rstd)
        return from_rows(dx, dy.shape), dw, db, None


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim with the Triton kernels; differentiable. x (..., N), weight, bias (N,) or None."""
    _check(x, weight, bias, eps)  # once, here: the launchers trust their inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.layer_norm(x, weight, bias, eps)
    return LayerNormFunction.apply(x, weight, bias, eps)
