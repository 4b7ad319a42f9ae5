"""A linear layer, ``y = x @ weight.T + bias``, that runs on the backend in force.

It holds its parameters like ``torch.nn.Linear`` and Hugging Face models do
(``weight`` of shape (out_features, in_features), ``bias`` of shape
(out_features,)), so checkpoints load by name. The work is done by
``llm_course.ops.linear``: the PyTorch reference by default, the Triton matmul
kernel under ``use_backend("triton")``, forward and backward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.checks import positive_int


class Linear(nn.Module):
    """x (..., in_features) -> (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = positive_int("Linear", "in_features", in_features, allow_zero=True)
        self.out_features = positive_int("Linear", "out_features", out_features, allow_zero=True)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))  # (N, K)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))  # (N,)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation: uniform in +-1/sqrt(in_features) for weight and bias."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)  # (..., K) -> (..., N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
