"""Rotary position embeddings (RoPE): the PyTorch reference.

RoPE encodes a token's position by *rotating* its query and key vectors. The D
features of a head are split into D/2 pairs; pair ``i`` is a point in a plane,
rotated by the angle ``position * inv_freq[i]``. A query at position m and a key
at position n then meet with an angle ``(m - n) * inv_freq[i]`` between them, so
their dot product depends only on the distance m - n.

Which features make a pair? Two conventions exist; this course uses the one of
Hugging Face's Llama and Qwen2 code ("rotate_half"): feature ``i`` pairs with
feature ``i + D/2``. With ``x1 = x[..., :D/2]`` and ``x2 = x[..., D/2:]``, a
rotation by angle a is::

    out1 = x1 * cos(a) - x2 * sin(a)
    out2 = x2 * cos(a) + x1 * sin(a)

which is ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``
and cos, sin of length D holding each angle twice, ``cat(cos(a), cos(a))``.
(The other convention, in the RoPE paper and Meta's original Llama code, pairs
neighbours (2i, 2i+1); checkpoints converted to HF format have their q/k
weights permuted so that the halves convention gives the same model.)

The tables cos and sin come from ``RotaryEmbedding`` in
``llm_course/models/components/embeddings/rotary.py``.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x2, x1)`` where x1, x2 are the two halves of the last dimension. (..., D) -> (..., D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def check_rope_inputs(op: str, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Shapes the op accepts: x (B, H, T, D) with D even; cos, sin (T, D) or (B, T, D) (or (1, T, D))."""
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be (B, H, T, D), got shape {tuple(x.shape)}")
    B, _, T, D = x.shape
    if D % 2 != 0:
        raise ValueError(f"{op}: the head size D={D} must be even (features are rotated in pairs)")
    if cos.shape != sin.shape:
        raise ValueError(f"{op}: cos and sin have different shapes {tuple(cos.shape)} and {tuple(sin.shape)}")
    ok = (cos.dim() == 2 and tuple(cos.shape) == (T, D)) or (
        cos.dim() == 3 and cos.shape[0] in (1, B) and tuple(cos.shape[1:]) == (T, D)
    )
    if not ok:
        raise ValueError(
            f"{op}: cos and sin must be (T, D) = ({T}, {D}) or (B, T, D) = ({B}, {T}, {D}) for x of shape "
            f"{tuple(x.shape)}, got {tuple(cos.shape)}"
        )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of x by its token's angles. x (B, H, T, D); cos, sin (B, T, D) or (T, D) -> (B, H, T, D).

    Computed in float32 (float64 for float64 inputs), returned in x's dtype.
    """
    check_rope_inputs("apply_rope", x, cos, sin)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if cos.dim() == 3:  # (B, T, D) -> (B, 1, T, D): the same angles for every head
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    xf = x.to(acc)
    out = xf * cos.to(acc) + rotate_half(xf) * sin.to(acc)  # (B, H, T, D)
    return out.to(x.dtype)
