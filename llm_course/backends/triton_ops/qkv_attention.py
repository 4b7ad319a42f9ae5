"""FlashAttention straight from GPT-2's packed projection: one gradient, no concatenation.

GPT-2's attention makes q, k and v with one projection, ``c_attn``: its output
``qkv`` (B, T, 3C) holds them side by side, and the heads are views of it::

    qkv (B, T, 3C) --view--> (B, T, 3, H, D) --[:, :, i].transpose(1, 2)--> q, k, v (B, H, T, D)

Through ``ops.attention`` the forward is free (the kernels read the views through
their strides), but the backward is not: autograd returns dq, dk and dv as three
tensors, and the split's backward concatenates them into the (B, T, 3C) gradient that
``c_attn`` needs -- a copy of the whole projection, every layer, every step. Here the
op takes ``qkv`` itself, so its backward allocates that one (B, T, 3C) gradient and
lets the backward kernels write dq, dk and dv into its three parts, through strides
(``flash_attention_backward(..., out=...)``). The kernels are the same as
``ops.attention``'s (``flash_attention.py``, ``flash_attention_bwd.py``).

The output comes merged, (B, T, C): the forward kernel stores o as (B, T, H, D), so
merging the heads is a view, and the backward gets o back as a view of the output.
"""

from __future__ import annotations

from llm_course.device import configure_triton

configure_triton()

import torch  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

from llm_course.backends import checks as contract  # noqa: E402
from llm_course.backends.registry import checks_own_inputs  # noqa: E402
from llm_course.backends.torch_ops.attention import split_qkv  # noqa: E402  (views only: no torch compute)
from llm_course.backends.triton_ops import custom_ops  # noqa: E402  (what torch.compile sees)
from llm_course.backends.triton_ops.checks import check_tensor  # noqa: E402
from llm_course.backends.triton_ops.flash_attention import flash_attention_forward  # noqa: E402
from llm_course.backends.triton_ops.flash_attention_bwd import flash_attention_backward  # noqa: E402
from llm_course.backends.triton_ops.flash_common import HEAD_DIMS  # noqa: E402
from llm_course.backends.triton_ops.launch import last_dim_contiguous  # noqa: E402

OP = "qkv_attention"


def qkv_attention_forward(qkv, num_heads: int, causal: bool, key_padding_mask):
    """qkv (B, T, 3C) -> y (B, T, C) in qkv's dtype, lse (B, H, T) float32."""
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, num_heads)  # (B, H, T, D) views of qkv
    o, lse = flash_attention_forward(q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    return o.transpose(1, 2).reshape(B, T, C3 // 3), lse  # o is stored (B, T, H, D): a view


def qkv_attention_backward(qkv, y, lse, dy, num_heads: int, causal: bool, key_padding_mask):
    """dqkv (B, T, 3C): dq, dk, dv written by the kernels into its three parts. dy, y (B, T, C)."""
    B, T, C3 = qkv.shape
    H, D = num_heads, C3 // (3 * num_heads)
    dy = last_dim_contiguous(dy)
    dqkv = torch.empty((B, T, C3), device=qkv.device, dtype=qkv.dtype)
    heads = lambda t: t.view(B, T, H, D).transpose(1, 2)  # noqa: E731  (B, T, C) -> (B, H, T, D) view
    flash_attention_backward(*split_qkv(qkv, H), heads(y), lse, heads(dy), causal=causal,
                             key_padding_mask=key_padding_mask, out=split_qkv(dqkv, H))  # fmt: skip
    return dqkv


class QKVFlashAttention(torch.autograd.Function):
    """Saved for the backward: qkv, the output y and lse (B, H, T) -- never the scores."""

    @staticmethod
    def forward(ctx, qkv, num_heads, causal, key_padding_mask):
        y, lse = qkv_attention_forward(qkv, num_heads, causal, key_padding_mask)
        ctx.save_for_backward(qkv, y, lse, key_padding_mask)
        ctx.num_heads, ctx.causal = num_heads, causal
        return y

    @staticmethod
    @once_differentiable  # the backward is kernels: no graph of its own, so no double backward
    def backward(ctx, dy):
        qkv, y, lse, key_padding_mask = ctx.saved_tensors
        return qkv_attention_backward(qkv, y, lse, dy, ctx.num_heads, ctx.causal, key_padding_mask), None, None, None


def _check(qkv, num_heads, causal, key_padding_mask, dropout_p) -> None:
    # the op's check: qkv (B, T, 3C) of floats holding data, C a multiple of num_heads, the mask, dropout_p
    contract.qkv_attention(qkv, num_heads, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p)
    # and the kernels' own: no dropout, a device Triton runs on, a dtype and a head dim they are built for
    if dropout_p:
        raise NotImplementedError(f"{OP}: dropout_p={dropout_p} is not supported by the Triton kernel; use the torch backend")
    check_tensor(OP, "qkv", qkv)
    D = qkv.shape[-1] // (3 * num_heads)
    if D not in HEAD_DIMS:
        raise ValueError(f"{OP}: head dim {D} is not supported; supported head dims: {', '.join(map(str, HEAD_DIMS))}")


@checks_own_inputs  # llm_course.ops does not check again what _check does here
def qkv_attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Backend "triton" of ``llm_course.ops.qkv_attention``: qkv (B, T, 3C) -> (B, T, C), differentiable."""
    _check(qkv, num_heads, causal, key_padding_mask, dropout_p)  # once, here: the launchers trust their inputs
    if torch.compiler.is_compiling():  # a custom op: torch.compile cannot trace into a launch
        return custom_ops.qkv_attention(qkv, num_heads, bool(causal), key_padding_mask)
    return QKVFlashAttention.apply(qkv, num_heads, bool(causal), key_padding_mask)
