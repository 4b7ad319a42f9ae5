"""Fused ops written as the ops they fuse: what the ``"exercises"`` backend runs for them.

A fused op does in one kernel what two or three ops would do one after the other:
``add_rms_norm`` is ``add`` then ``rms_norm`` in one pass over memory, ``qkv_attention``
splits a packed projection, runs ``attention`` and merges the heads, and its backward
hands back one packed gradient instead of three to concatenate. The models call the
fused op because it is faster.

The learner writes the parts, not the fusions (``add``, ``rms_norm``, ``attention`` are
exercises; ``add_rms_norm`` is not). So when the learner's kernels are chosen
(``use_backend("exercises")``) each fused op runs as the composition below, and every
op inside it runs the learner's answer: the fused op never hides their kernel from the
model that calls it. Each function here has its op's signature and gives the same
result as the op's torch reference (``tests/test_op_declarations.py`` checks both).
"""

from __future__ import annotations

import torch

from llm_course import ops
from llm_course.backends.torch_ops.attention import split_qkv


def add_layer_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``s = x + h`` (x's dtype), then ``layer_norm(s)`` (h's dtype). x, h (..., N)."""
    s = ops.add(x, h.to(x.dtype))
    return s, ops.layer_norm(s, weight, bias, eps).to(h.dtype)


def add_rms_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``s = x + h`` (x's dtype), then ``rms_norm(s)`` (h's dtype). x, h (..., N)."""
    s = ops.add(x, h.to(x.dtype))
    return s, ops.rms_norm(s, weight, eps).to(h.dtype)


def qkv_attention(
    qkv: torch.Tensor,
    num_heads: int,
    *,
    causal: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Split the packed projection, ``ops.attention``, merge the heads. qkv (B, T, 3C) -> (B, T, C)."""
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, num_heads)  # (B, H, T, D) views
    y = ops.attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)  # (B, T, C)
