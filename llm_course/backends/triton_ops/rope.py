"""Rotary embeddings in Triton: one pass over q (or k), forward and backward.

    x (B, H, T, D), cos and sin (B, T, D) or (T, D) -> x rotated, (B, H, T, D)

With x1, x2 the two halves of a head (pairs (i, i + D/2), see
``llm_course/backends/torch_ops/rope.py``), and c1, c2, s1, s2 the halves of
cos and sin::

    forward:   out1 = x1 * c1 - x2 * s1        out2 = x2 * c2 + x1 * s2
    backward:  dx1 = dy1 * c1 + dy2 * s2       dx2 = dy2 * c2 - dy1 * s1

The backward is the transpose of the forward. For RoPE's tables (c1 = c2 and
s1 = s2) it is simply the rotation by the opposite angle: the same kernel with
sin negated, selected by ``BACKWARD``.

RoPE does 6 FLOPs per pair and moves every byte of x twice (read, write): it is
purely memory-bound, and the only goal is to move those bytes at the speed of a
copy. So:

* one program handles one token (b, t) and a block of ``BLOCK_H`` heads (usually
  all of them): it loads cos and sin for that token once and reuses them for
  every head;
* each half of each head is loaded once and written once, as a
  (BLOCK_H, BLOCK_HALF) tile; BLOCK_HALF is D/2 rounded up to a power of two, and a
  mask switches off the extra columns, so D = 80 or 96 works as well as 64 or 128;
* when D/2 is a power of two (D = 64, 128, ...) the columns need no mask
  (``EVEN_HALF``): a mask that compares column indices with a run-time length
  changes from one column to the next, and that stops the compiler from turning
  the loads into 16-byte vector loads; a mask over heads only does not;
* the kernel takes strides: a (B, T, H, D) projection viewed as (B, H, T, D) with
  ``transpose(1, 2)`` is read in place, without a copy (only the last dimension
  must be contiguous).

``apply_rope_qk`` rotates q and k (which may have different head counts, as in
GQA) in one launch: the extra programs of the grid take k's heads.
Arithmetic is float32; the output has x's dtype. cos and sin are tables, not
learned: no gradient flows to them.
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
from llm_course.backends.torch_ops.rope import check_rope_inputs  # noqa: E402
from llm_course.backends.triton_ops.checks import check_same_device, check_tensor, check_tensors  # noqa: E402
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.launch import cdiv, last_dim_contiguous, next_power_of_2  # noqa: E402
from llm_course.backends.triton_ops.launch_cache import launch  # noqa: E402

OP = "apply_rope"
MAX_TILE = 4096  # elements of x per program (both halves): enough bytes in flight per program


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr,  # this token's row: x[b, :, t, :] and out[b, :, t, :]
    c1, c2, s1, s2,  # (1, BLOCK_HALF) float32: the halves of cos and sin for this token
    h_block, H, HALF,
    stride_xh, stride_oh,  # elements from one head to the next
    BACKWARD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, EVEN_HALF: tl.constexpr,
):
    """Rotate heads h_block * BLOCK_H .. + BLOCK_H - 1 of one token."""
    offs_h = h_block * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    offs_d = tl.arange(0, BLOCK_HALF)  # (BLOCK_HALF,)
    if EVEN_HALF:  # BLOCK_HALF == HALF: mask the heads only, so that loads stay 16 bytes wide
        mask = (offs_h[:, None] < H) & (offs_d[None, :] < BLOCK_HALF)  # (BLOCK_H, BLOCK_HALF)
    else:
        mask = (offs_h[:, None] < H) & (offs_d[None, :] < HALF)
    x1_ptrs = x_ptr + offs_h[:, None] * stride_xh + offs_d[None, :]  # first halves
    x1 = tl.load(x1_ptrs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_HALF)
    x2 = tl.load(x1_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)  # second halves
    if BACKWARD:
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    o1_ptrs = out_ptr + offs_h[:, None] * stride_oh + offs_d[None, :]
    tl.store(o1_ptrs, o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(o1_ptrs + HALF, o2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rope_kernel(
    x_ptr, out_ptr, cos_ptr, sin_ptr,
    y_ptr, out_y_ptr,  # a second tensor (k) rotated by the same launch, or unused
    T, H, HY, HALF,
    stride_xb, stride_xh, stride_xt,  # x (B, H, T, D), last stride 1
    stride_ob, stride_oh, stride_ot,
    stride_yb, stride_yh, stride_yt,  # y (B, HY, T, D)
    stride_pb, stride_ph, stride_pt,  # out_y
    stride_cb, stride_ct,  # cos and sin (B or 1, T, D); stride_cb = 0 when shared by the batch
    BACKWARD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, EVEN_HALF: tl.constexpr,
):
    """Grid (B * T, head blocks of x [+ head blocks of y]): one token, one block of heads."""
    row = tl.program_id(0).to(tl.int64)  # 64-bit: offsets of large tensors exceed 2**31
    h_block = tl.program_id(1)
    b = row // T
    t = row % T

    # cos and sin of this token: loaded once, used for every head of the block
    offs_d = tl.arange(0, BLOCK_HALF)
    if EVEN_HALF:
        d_mask = offs_d < BLOCK_HALF  # always true: lets the loads stay vectorized
    else:
        d_mask = offs_d < HALF
    c_row = b * stride_cb + t * stride_ct + offs_d  # (BLOCK_HALF,)
    c1 = tl.load(cos_ptr + c_row, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + c_row + HALF, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + c_row, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + c_row + HALF, mask=d_mask, other=0.0).to(tl.float32)[None, :]

    x_blocks = tl.cdiv(H, BLOCK_H)
    if h_block < x_blocks:
        _rotate_heads(
            x_ptr + b * stride_xb + t * stride_xt, out_ptr + b * stride_ob + t * stride_ot,
            c1, c2, s1, s2, h_block, H, HALF, stride_xh, stride_oh,
            BACKWARD, BLOCK_H, BLOCK_HALF, EVEN_HALF,
        )  # fmt: skip
    else:
        _rotate_heads(
            y_ptr + b * stride_yb + t * stride_yt, out_y_ptr + b * stride_pb + t * stride_pt,
            c1, c2, s1, s2, h_block - x_blocks, HY, HALF, stride_yh, stride_ph,
            BACKWARD, BLOCK_H, BLOCK_HALF, EVEN_HALF,
        )  # fmt: skip


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """``apply_rope``'s check: the op's, then the kernel's own."""
    contract.apply_rope(x, cos, sin)  # ranks and shapes that agree, one device, float dtypes
    check_tensors(OP, x=x, cos=cos, sin=sin)  # a device Triton runs on, a dtype the kernel supports
    _check_layout(x, cos, sin)


def _check_qk_input(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, name: str) -> None:
    """``apply_rope_qk``'s check of q or k: it is no op of ``llm_course.ops``, so nothing checked them before."""
    check_tensor(OP, name, x, ndim=4)
    check_tensor(OP, "cos", cos, ndim=(2, 3))
    check_tensor(OP, "sin", sin, ndim=(2, 3))
    check_same_device(OP, **{name: x}, cos=cos, sin=sin)
    check_rope_inputs(OP, x, cos, sin)
    _check_layout(x, cos, sin, name)


def _check_layout(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, name: str = "x") -> None:
    """What only the kernel needs besides: rows of x with a contiguous last dimension, tables without grad."""
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(
            f"{OP}: the last dimension of {name} must be contiguous (strides {x.stride()}); call .contiguous()"
        )
    if torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad):
        raise ValueError(f"{OP}: the Triton kernel gives no gradient for cos and sin; pass tables that do not require grad")


def _table_strides(cos: torch.Tensor) -> tuple[int, int]:
    """(batch stride, token stride) of a (B, T, D) or (T, D) table; batch stride 0 when it is shared."""
    if cos.dim() == 2 or cos.shape[0] == 1:
        return 0, cos.stride(-2)
    return cos.stride(0), cos.stride(1)


def _block_sizes(H: int, HY: int, D: int) -> tuple[int, int, int]:
    BLOCK_HALF = next_power_of_2(max(D // 2, 1))
    BLOCK_H = min(next_power_of_2(max(H, HY, 1)), max(1, MAX_TILE // (2 * BLOCK_HALF)))
    num_warps = 4 if BLOCK_H * BLOCK_HALF >= 1024 else 2
    return BLOCK_H, BLOCK_HALF, num_warps


def rope_launch(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, y: torch.Tensor | None = None, *, backward: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate x (and y, if given, with the same tables) in one launch; inputs already checked."""
    B, H, T, D = x.shape
    cos, sin = cos.contiguous(), sin.contiguous()  # small tables (no copy when already contiguous)
    out = torch.empty_like(x)
    out_y = torch.empty_like(y) if y is not None else None
    HY = y.shape[1] if y is not None else 0
    BLOCK_H, BLOCK_HALF, num_warps = _block_sizes(H, HY, D)
    n_blocks = cdiv(H, BLOCK_H) + (cdiv(HY, BLOCK_H) if y is not None else 0)
    if B * T == 0 or n_blocks == 0:
        return out, out_y
    yy, oy = (y, out_y) if y is not None else (x, out)  # unused pointers when there is no y
    stride_cb, stride_ct = _table_strides(cos)
    launch(
        rope_kernel, (B * T, n_blocks), x, out, cos, sin, yy, oy,
        T, H, HY, D // 2,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        yy.stride(0), yy.stride(1), yy.stride(2),
        oy.stride(0), oy.stride(1), oy.stride(2),
        stride_cb, stride_ct,
        BACKWARD=backward, BLOCK_H=BLOCK_H, BLOCK_HALF=BLOCK_HALF, EVEN_HALF=BLOCK_HALF == D // 2,
        num_warps=num_warps,
    )  # fmt: skip
    return out, out_y


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rope_launch(x, cos, sin)[0]

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dout):
        cos, sin = ctx.saved_tensors
        dx = rope_launch(last_dim_contiguous(dout), cos, sin, backward=True)[0]
        return dx, None, None


class RopeQKFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rope_launch(q, cos, sin, k)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no graph of its own, so no double backward
    def backward(ctx, dq_out, dk_out):
        cos, sin = ctx.saved_tensors
        dq_out = last_dim_contiguous(dq_out) if dq_out is not None else None
        dk_out = last_dim_contiguous(dk_out) if dk_out is not None else None
        if dq_out is None or dk_out is None:  # only one of them was used: rotate that one
            dq = rope_launch(dq_out, cos, sin, backward=True)[0] if dq_out is not None else None
            dk = rope_launch(dk_out, cos, sin, backward=True)[0] if dk_out is not None else None
            return dq, dk, None, None
        dq, dk = rope_launch(dq_out, cos, sin, dk_out, backward=True)
        return dq, dk, None, None


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of x by its token's angles. x (B, H, T, D); cos, sin (B, T, D) or (T, D) -> (B, H, T, D)."""
    _check(x, cos, sin)  # once, here: the launcher trusts its inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.apply_rope(x, cos, sin)
    return RopeFunction.apply(x, cos, sin)


def apply_rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys in one launch. q (B, Hq, T, D), k (B, Hkv, T, D) -> same shapes."""
    _check_qk_input(q, cos, sin, "q")  # all of apply_rope's checks, for q and for k
    _check_qk_input(k, cos, sin, "k")
    if k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"apply_rope_qk: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, T and D")
    check_same_device("apply_rope_qk", q=q, k=k)
    return RopeQKFunction.apply(q, k, cos, sin)
