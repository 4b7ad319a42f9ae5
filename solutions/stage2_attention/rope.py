"""Stage 2 exercise: rotary position embeddings (exercise apply_rope).

RoPE tells attention where each token is by rotating its query and key vectors:
the head's D features form D/2 pairs, and each pair, a point in a plane, is
turned by an angle that grows with the token's position (a different speed for
each pair). The angles' cosines and sines come precomputed, one row per token,
from ``llm_course.models.components.RotaryEmbedding``.

Pairing, as in Hugging Face's Llama and Qwen2: feature ``i`` pairs with feature
``i + D/2`` (the two halves), NOT with its neighbour ``i + 1``. Rotating the pair
(a, b) by an angle t gives (a cos t - b sin t, b cos t + a sin t). For a whole
vector that is::

    out = x * cos + rotate_half(x) * sin,     rotate_half(x) = cat(-x2, x1)

where x1, x2 are the first and second halves of x, and cos, sin hold each angle
twice (``cos = cat(cos(t), cos(t))``).

Notebook ``02a_attention_and_rope`` draws it; the course's version is in
``llm_course/backends/torch_ops/rope.py`` (look there only once you are done).
"""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of x by its token's angles.

    Args:
        x: (B, H, T, D) queries or keys, D even; float32, float64 or float16.
        cos, sin: (B, T, D) (each sequence of the batch has its own positions) or
            (T, D) (shared by the batch); float32 or x's dtype.

    Returns:
        (B, H, T, D) in x's dtype: ``x * cos + rotate_half(x) * sin`` where
        ``rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])``.

    Hint: a (B, T, D) table must line up with the T axis of x and be the same
    for every head: ``cos.unsqueeze(1)`` makes it (B, 1, T, D). A (T, D) table
    broadcasts as it is. Compute in float32 (``x.float()``) and convert the
    result back with ``.to(x.dtype)``.
    """
    # BEGIN EXERCISE apply_rope
    # stub raises: "apply_rope: x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) over the two halves"
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D): the same for every head
    half = x.shape[-1] // 2
    xf = x.float() if x.dtype != torch.float64 else x
    x1, x2 = xf[..., :half], xf[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)  # rotate_half(x)
    return (xf * cos.to(xf.dtype) + rotated * sin.to(xf.dtype)).to(x.dtype)
    # END EXERCISE apply_rope
