"""Normalization layers: RMSNorm (Llama, Qwen) and LayerNorm (GPT-2).

They hold their parameters under the names Hugging Face models use (``weight``,
and ``bias`` for LayerNorm), so checkpoints load by name, and do their work
through ``llm_course.ops``: the PyTorch reference by default, the Triton kernels
(forward and backward) under ``use_backend("triton")``, the learner's kernels
under ``use_backend("exercises")``.

The arguments are those of Hugging Face's modules (``LlamaRMSNorm(hidden_size, eps)``,
``nn.LayerNorm``): a model passes its config's ``rms_norm_eps`` (Llama, Qwen2) or
``layer_norm_epsilon`` (GPT-2) as ``eps``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.checks import non_negative_float, positive_int


class RMSNorm(nn.Module):
    """x (..., hidden_size) -> x / sqrt(mean(x**2) + eps) * weight, same shape and dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.hidden_size = positive_int("RMSNorm", "hidden_size", hidden_size)
        self.eps = non_negative_float("RMSNorm", "eps", eps)
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))  # (N,)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + h, self(x + h))`` in one pass: a residual add and this norm after it.
        x, h (..., hidden_size) -> the sum in x's dtype, its norm in h's dtype."""
        return ops.add_rms_norm(x, h, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class LayerNorm(nn.Module):
    """x (..., hidden_size) -> (x - mean) / sqrt(var + eps) * weight + bias, same shape and dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.hidden_size = positive_int("LayerNorm", "hidden_size", hidden_size)
        self.eps = non_negative_float("LayerNorm", "eps", eps)
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))  # (N,)
        if bias:
            self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))  # (N,)
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps)

    def add_and_norm(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x + h, self(x + h))`` in one pass: a residual add and this norm after it.
        x, h (..., hidden_size) -> the sum in x's dtype, its norm in h's dtype."""
        return ops.add_layer_norm(x, h, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, bias={self.bias is not None}"
