"""The feed-forward blocks that follow attention in every transformer layer.

Applied to each token on its own, they widen the vector, apply a nonlinearity,
and narrow it back.

* :class:`MLP`, GPT-2's (``mlp.c_fc``, ``mlp.c_proj``)::

      x (B, T, C) --c_fc--> (B, T, 4C) --gelu--> --c_proj--> (B, T, C) --dropout-->

  with GELU in its tanh approximation (HF's ``"gelu_new"``). As in attention, HF's
  GPT-2 stores these weights transposed (``Conv1D``).

* :class:`GatedMLP`, the SwiGLU block of Llama and Qwen2 (``mlp.gate_proj``,
  ``mlp.up_proj``, ``mlp.down_proj``, no biases)::

      x --gate_proj--> silu --\
                               * --> (B, T, I) --down_proj--> (B, T, C)
      x --up_proj-------------/

  One branch gates the other elementwise; I (``intermediate_size``) is typically
  about 8C/3 rounded, so the three matrices cost what GPT-2's two do at 4C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_course.models.components.linear import Linear


class MLP(nn.Module):
    """GPT-2's MLP: x (B, T, C) -> (B, T, C). ``MLP(d_model, hidden=4 * d_model, bias=True, dropout=0.0)``."""

    def __init__(self, d_model: int, hidden: int | None = None, *, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or 4 * d_model
        self.c_fc = Linear(d_model, hidden, bias=bias)
        self.c_proj = Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class GatedMLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``. x (B, T, C) -> (B, T, C).

    ``GatedMLP(hidden_size, intermediate_size, bias=False)``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, bias: bool = False):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, I) -> (B, T, C)
