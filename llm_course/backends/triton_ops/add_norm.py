"""The residual add fused into the norm that follows it, forward and backward.

In a pre-norm block the stream ``x`` gets a sub-layer's output ``h`` added to it, and the
very next thing is a norm of the sum::

    s = x + h                 # the residual add           x (M, N), h (M, N)
    y = norm(s)               # LayerNorm or RMSNorm       y feeds the next sub-layer

Unfused, that is two trips through memory: the add reads x and h and writes s, then the
norm reads s again and writes y (and under autocast y, written in x's float32, is read
once more to be cast to bfloat16 for the matmul that follows). Fused, one program per
row reads x and h once and writes s and y once, y directly in **h's dtype**: the sub-
layer's compute dtype (bfloat16 under autocast), which is what the next matmul wants.
s keeps x's dtype (the residual stream stays float32 under autocast).

The backward is one pass too. Both s and y depend on s, so the gradient reaching s is
the one coming into s from the rest of the stream (``ds``) plus the norm's backward of
``dy`` (the formulas of ``layernorm.py`` and ``rmsnorm.py``, with RMSNorm the case
mean = 0)::

    dsum = ds + norm_backward(dy)        dx = dsum (x's dtype),  dh = dsum (h's dtype)

written once in each dtype, with the partial sums of dweight (and dbias) per program as
in the norms' own backward kernels. The sum is rounded to x's dtype before it is
normalized, exactly as the unfused add then norm would see it, so the fused op gives
the same numbers as the two ops it replaces. The reference is ``add_layer_norm`` and
``add_rms_norm`` in ``torch_ops/norms.py``.
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
from llm_course.backends.triton_ops.layernorm import norm_row_backward, normalize_row  # noqa: E402

MAX_FUSED_SIZE = 65536  # longest row (elements) kept in registers, as in the norms' kernels


# --- kernels -----------------------------------------------------------------------------


@triton.jit
def add_norm_fwd_kernel(
    x_ptr, h_ptr, w_ptr, b_ptr, s_ptr, y_ptr, mean_ptr, rstd_ptr,
    x_row_stride, h_row_stride, s_row_stride, y_row_stride, n_cols, inv_n, eps,
    IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    """One program = one row: s = x + h (x's dtype), y = norm(s) (h's dtype), its mean and rstd (float32)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + row * h_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    s = (x + h).to(s_ptr.dtype.element_ty)  # the sum as the stream stores it
    tl.store(s_ptr + row * s_row_stride + cols, s, mask=mask)
    # normalize what was stored, as an unfused norm would read it (LayerNorm's row, or RMSNorm's: mean 0)
    s_hat, mean, rstd = normalize_row(s.to(tl.float32), mask, inv_n, eps, not IS_RMS)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)
    y = s_hat * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_norm_bwd_kernel(
    dy_ptr, ds_ptr, s_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dh_ptr, dw_partial_ptr, db_partial_ptr,
    dy_row_stride, ds_row_stride, s_row_stride, dx_row_stride, dh_row_stride,
    n_rows, n_cols, inv_n, rows_per_program,
    IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_SIZE: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    """Program p: dx and dh (= ds + norm's backward of dy) for its rows, and their partial dweight (and dbias).

    The loop is ``layernorm_bwd_kernel``'s (RMSNorm's with mean 0), with ds added and two stores."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    db = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in tl.range(row_start, row_end, num_stages=NUM_STAGES):
        dy = tl.load(dy_ptr + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + row * s_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        s_hat = tl.where(mask, (s - mean) * rstd, 0.0)
        dsum = norm_row_backward(dy, s_hat, w, rstd, inv_n, not IS_RMS)
        # plus the gradient that reached s from the rest of the stream
        dsum += tl.load(ds_ptr + row * ds_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * dx_row_stride + cols, dsum.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dh_ptr + row * dh_row_stride + cols, dsum.to(dh_ptr.dtype.element_ty), mask=mask)
        dw += dy * s_hat
        if HAS_BIAS:
            db += dy
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(db_partial_ptr + pid * n_cols + cols, db, mask=mask)


# --- launchers ---------------------------------------------------------------------------


def _check(op: str, x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           eps: float) -> None:  # fmt: skip
    if op == "add_rms_norm":  # the op's check: shapes that agree, one device, float dtypes, eps
        contract.add_rms_norm(x, h, weight, eps)
    else:
        contract.add_layer_norm(x, h, weight, bias, eps)
    check_tensors(op, x=x, h=h, weight=weight, bias=bias)  # and the kernels' own: a device Triton runs on, a dtype they support


def _op(is_rms: bool) -> str:
    return "add_rms_norm" if is_rms else "add_layer_norm"


def add_norm_forward(x, h, weight, bias, eps: float, is_rms: bool):
    """x, h (M, N); weight, bias (N,) or None -> s (M, N) in x's dtype, y (M, N) in h's dtype, mean, rstd (M,) float32."""
    M, N = x.shape
    s = torch.empty((M, N), dtype=x.dtype, device=x.device)
    y = torch.empty((M, N), dtype=h.dtype, device=x.device)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)  # (the kernel writes it, 0 for RMSNorm)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:  # rows of no elements: mean 0, rstd as for a variance of 0
        return s, y, mean.zero_(), rstd.fill_(eps**-0.5 if eps > 0 else float("inf"))
    block, num_warps = block_config(_op(is_rms), N, MAX_FUSED_SIZE)
    w = last_dim_contiguous(weight)
    launch(
        add_norm_fwd_kernel, (M,), x, h, w, last_dim_contiguous(bias) if bias is not None else w, s, y, mean, rstd,
        x.stride(0), h.stride(0), s.stride(0), y.stride(0), N, 1.0 / N, eps,
        IS_RMS=is_rms, HAS_BIAS=bias is not None, BLOCK_SIZE=block, num_warps=num_warps,
    )  # fmt: skip
    return s, y, mean, rstd


def add_norm_backward(ds, dy, s, weight, bias, mean, rstd, h_dtype: torch.dtype, is_rms: bool):
    """ds, dy, s (M, N); weight, bias (N,) or None; mean, rstd (M,)
    -> dx (M, N) in s's dtype, dh (M, N) in h_dtype, dweight (N,), dbias (N,) or None."""
    has_bias = bias is not None
    M, N = s.shape
    dx = torch.empty((M, N), dtype=s.dtype, device=s.device)
    dh = torch.empty((M, N), dtype=h_dtype, device=s.device)
    if M == 0 or N == 0:
        return dx, dh, torch.zeros_like(weight), torch.zeros_like(bias) if has_bias else None
    block, num_warps = block_config(_op(is_rms), N, MAX_FUSED_SIZE)
    programs, rows_per_program = backward_programs(M, num_warps, s.device)
    # partial sums: [0] dweight, [1] dbias, one row per program; one .sum() reduces both
    partial = torch.empty((2 if has_bias else 1, programs, N), dtype=torch.float32, device=s.device)
    launch(
        add_norm_bwd_kernel, (programs,), dy, ds, s, last_dim_contiguous(weight), mean, rstd, dx, dh, partial[0], partial[-1],
        dy.stride(0), ds.stride(0), s.stride(0), dx.stride(0), dh.stride(0),
        M, N, 1.0 / N, rows_per_program,
        IS_RMS=is_rms, HAS_BIAS=has_bias, BLOCK_SIZE=block, NUM_STAGES=backward_stages(block, s.element_size()), num_warps=num_warps,
    )  # fmt: skip
    sums = partial.sum(dim=1)  # (2 or 1, N) float32
    return dx, dh, sums[0].to(weight.dtype), sums[1].to(bias.dtype) if has_bias else None


class AddNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, weight, bias, eps, is_rms):
        s, y, mean, rstd = add_norm_forward(as_rows(x), as_rows(h), weight, bias, eps, is_rms)
        ctx.save_for_backward(s, weight, bias, mean, rstd)
        ctx.h_dtype, ctx.is_rms = h.dtype, is_rms
        return from_rows(s, x.shape), from_rows(y, x.shape)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, ds, dy):  # (an unused output's gradient comes as zeros: autograd materializes it)
        s, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dh, dw, db = add_norm_backward(as_rows(ds), as_rows(dy), s, weight, bias, mean, rstd,
                                           ctx.h_dtype, ctx.is_rms)  # fmt: skip
        return from_rows(dx, dy.shape), from_rows(dh, dy.shape), dw, db, None, None


def _add_norm(x, h, weight, bias, eps, is_rms):
    _check(_op(is_rms), x, h, weight, bias, eps)  # once, here: the launchers trust their inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.add_norm(x, h, weight, bias, eps, is_rms)
    return AddNormFunction.apply(x, h, weight, bias, eps, is_rms)


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def add_layer_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(x + h, layer_norm(x + h)) in one pass: x, h (..., N) -> s in x's dtype, y in h's dtype."""
    return _add_norm(x, h, weight, bias, eps, False)


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def add_rms_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(x + h, rms_norm(x + h)) in one pass: x, h (..., N) -> s in x's dtype, y in h's dtype."""
    return _add_norm(x, h, weight, None, eps, True)
