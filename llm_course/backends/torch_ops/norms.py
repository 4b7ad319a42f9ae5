"""RMSNorm and LayerNorm over the last dimension, the references for the kernels.

Both normalize each row of ``x`` (..., N) by its own statistics, then scale by a
learned ``weight`` (N,) (LayerNorm also shifts by a ``bias`` (N,)):

    RMSNorm:    y = x / sqrt(mean(x**2) + eps) * weight                      (Llama, Qwen)
    LayerNorm:  y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias       (GPT-2)

``rstd = 1 / sqrt(... + eps)`` is the "reciprocal standard deviation"; ``eps``
sits *inside* the square root, so a row of zeros gives ``y = 0``, not NaN.
The statistics are computed in float32 whatever the input dtype (a sum of 4096
bfloat16 squares in bfloat16 would lose most of its digits) and the result is
cast back to the input's dtype -- exactly what the Triton kernels do.

Autograd differentiates these functions; the Triton kernels write the backward
by hand (see ``rmsnorm_backward`` below for the formulas they implement).
"""

from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim. x (..., N), weight (N,) -> (..., N) in x's dtype."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},)")
    c = _compute_dtype(x)
    xc = x.to(c)
    rstd = torch.rsqrt(xc.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (xc * rstd * weight.to(c)).to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim. x (..., N), weight and bias (N,) (bias may be None) -> (..., N)."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"layer_norm: weight has shape {tuple(weight.shape)}, expected ({x.shape[-1]},)")
    if bias is not None and bias.shape != x.shape[-1:]:
        raise ValueError(f"layer_norm: bias has shape {tuple(bias.shape)}, expected ({x.shape[-1]},)")
    c = _compute_dtype(x)
    xc = x.to(c)
    mean = xc.mean(dim=-1, keepdim=True)  # (..., 1)
    xm = xc - mean
    rstd = torch.rsqrt(xm.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1), biased variance as in torch
    y = xm * rstd * weight.to(c)
    if bias is not None:
        y = y + bias.to(c)
    return y.to(x.dtype)


def add_layer_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A residual add and the LayerNorm after it: ``s = x + h`` (x's dtype), ``y = layer_norm(s)`` (h's dtype).

    x, h (..., N). In a pre-norm block x is the residual stream and h a sub-layer's output;
    y, in the sub-layer's dtype (bfloat16 under autocast), feeds the next sub-layer.
    The Triton kernel (``triton_ops/add_norm.py``) does both in one pass over memory.
    """
    s = x + h.to(x.dtype)
    return s, layer_norm(s, weight, bias, eps).to(h.dtype)


def add_rms_norm(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A residual add and the RMSNorm after it: ``s = x + h`` (x's dtype), ``y = rms_norm(s)`` (h's dtype)."""
    s = x + h.to(x.dtype)
    return s, rms_norm(s, weight, eps).to(h.dtype)


def rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients the RMSNorm backward kernel computes, written out. Shapes: dy, x (M, N); weight (N,); rstd (M,).

    With ``x_hat = x * rstd`` and ``g = dy * weight`` (both (M, N)):

        dx      = rstd * (g - x_hat * mean(g * x_hat))         per row
        dweight = sum over rows of dy * x_hat                  (N,)

    The ``- x_hat * mean(...)`` term is there because every x_i also changes the
    row's rms, and so every output of the row.
    """
    c = _compute_dtype(x)
    x_hat = x.to(c) * rstd.to(c)[:, None]  # (M, N)
    g = dy.to(c) * weight.to(c)  # (M, N)
    dx = rstd.to(c)[:, None] * (g - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
    dw = (dy.to(c) * x_hat).sum(dim=0)  # (N,)
    return dx.to(x.dtype), dw.to(weight.dtype)
