"""The MLPs' activations, the references for the kernels: GELU (tanh) and SiLU-times-gate.

GPT-2's MLP applies GELU in its tanh approximation (Hugging Face's ``"gelu_new"``)::

    gelu_tanh(x) = 0.5 * x * (1 + tanh(z)),     z = sqrt(2/pi) * (x + 0.044715 * x**3)
                 = x * sigmoid(2 z)                (because 0.5 * (1 + tanh(z)) = sigmoid(2 z))

Llama and Qwen2's gated MLP (SwiGLU) multiplies one projection, passed through SiLU,
by another::

    silu_mul(gate, up) = silu(gate) * up = gate * sigmoid(gate) * up

As one op rather than ``F.silu(gate) * up``, a kernel reads ``gate`` and ``up`` once
and writes the product once, instead of writing ``silu(gate)`` out and reading it back.

Both are computed in float32 (float64 for float64 inputs) and returned in the input's
dtype, as the Triton kernels do. Autograd differentiates these functions; the kernels
write the backward by hand, with the derivatives spelled out below.
"""

from __future__ import annotations

import math

import torch

GELU_C = math.sqrt(2.0 / math.pi)  # sqrt(2/pi)
GELU_A = 0.044715


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``. (...) -> (...)."""
    xc = x.to(_compute_dtype(x))
    z = GELU_C * (xc + GELU_A * xc**3)
    return (0.5 * xc * (1.0 + torch.tanh(z))).to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gating: ``silu(gate) * up = gate * sigmoid(gate) * up``. gate, up (...) same shape -> (...)."""
    if gate.shape != up.shape:
        raise ValueError(f"silu_mul: gate has shape {tuple(gate.shape)} but up has shape {tuple(up.shape)}; they must match")
    c = _compute_dtype(gate)
    g = gate.to(c)
    return (g * torch.sigmoid(g) * up.to(c)).to(gate.dtype)


def gelu_tanh_backward(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dx of ``gelu_tanh``, written out as the kernel computes it. dy, x (...) -> dx (...).

    With ``s = sigmoid(2 z)`` and ``y = x * s``::

        dy/dx = s + x * s * (1 - s) * 2 * dz/dx,      dz/dx = sqrt(2/pi) * (1 + 3 * 0.044715 * x**2)
    """
    c = _compute_dtype(x)
    xc = x.to(c)
    s = torch.sigmoid(2.0 * GELU_C * (xc + GELU_A * xc**3))
    dz = GELU_C * (1.0 + 3.0 * GELU_A * xc**2)
    return (dy.to(c) * (s + 2.0 * xc * s * (1.0 - s) * dz)).to(x.dtype)


def silu_mul_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d(gate), d(up) of ``silu_mul``, written out. dy, gate, up (...) -> (dgate, dup).

    With ``s = sigmoid(gate)``: ``silu(g) = g * s`` and ``silu'(g) = s * (1 + g * (1 - s))``, so::

        dgate = dy * up * s * (1 + gate * (1 - s))
        dup   = dy * gate * s
    """
    c = _compute_dtype(gate)
    g, u, d = gate.to(c), up.to(c), dy.to(c)
    s = torch.sigmoid(g)
    return (d * u * s * (1.0 + g * (1.0 - s))).to(gate.dtype), (d * g * s).to(up.dtype)
