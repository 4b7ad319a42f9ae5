"""The ops that models call. Each one runs under the backend in force.

    from llm_course import ops
    from llm_course.backends import use_backend

    y = ops.rms_norm(x, weight)            # torch reference (the default)
    with use_backend("triton"):
        y = ops.rms_norm(x, weight)        # the Triton kernel, forward and backward

Models and layers call these functions and never launch a kernel themselves;
the signatures here are the contract every backend implements.
"""

from __future__ import annotations

import torch

from llm_course.backends.registry import dispatch


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise ``x + y`` (same shape)."""
    return dispatch("add", x, y)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. (..., N) -> (..., N)."""
    return dispatch("softmax", x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``. x (..., N), weight (N,)."""
    return dispatch("rms_norm", x, weight, eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension. x (..., N), weight and bias (N,)."""
    return dispatch("layer_norm", x, weight, bias, eps)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix product. a (M, K), b (K, N) -> (M, N), accumulated in float32."""
    return dispatch("matmul", a, b)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``. x (..., K), weight (N, K) as in nn.Linear, bias (N,) -> (..., N)."""
    return dispatch("linear", x, weight, bias)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query or key heads by position. x (B, H, T, D); cos, sin (B, T, D) or (T, D)."""
    return dispatch("apply_rope", x, cos, sin)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query heads.

    q (B, Hq, T, D); k, v (B, Hkv, S, D) with Hkv dividing Hq; -> (B, Hq, T, D).
    ``causal`` masks future keys (query i sees keys <= i + S - T); ``window`` keeps
    only the last ``window`` keys of each query; ``key_padding_mask`` (B, S) is True
    where a key is real and False where it is padding. ``dropout_p`` drops attention
    probabilities (layers pass it only while training). A query that sees no key gives 0.
    """
    kwargs = dict(causal=causal, scale=scale, window=window, key_padding_mask=key_padding_mask)
    if dropout_p:
        kwargs["dropout_p"] = dropout_p
    return dispatch("attention", q, k, v, **kwargs)
