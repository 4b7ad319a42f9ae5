"""The feed-forward blocks that follow attention in every transformer layer.

Applied to each token on its own, they widen the vector, apply a nonlinearity,
and narrow it back. Both run their activation through ``llm_course.ops``, so the
backend switch reaches it like the matmuls (the Triton kernels under
``use_backend("triton")``).

* :class:`MLP`, GPT-2's::

      x (B, T, C) --c_fc--> (B, T, I) --gelu_tanh--> --c_proj--> (B, T, C) --dropout-->

  with I = ``intermediate_size`` (GPT-2: 4C, its config's ``n_inner`` left None) and
  GELU in its tanh approximation (HF's ``"gelu_new"``, ``ops.gelu_tanh``). The
  projections keep the names of Hugging Face's GPT-2 (``mlp.c_fc``, ``mlp.c_proj``),
  as :class:`MultiHeadAttention` keeps ``c_attn``/``c_proj``: a GPT-2 checkpoint's keys
  load as they are, with one difference to keep in mind: HF's GPT-2 stores these
  weights in a ``Conv1D`` of shape (in, out), the transpose of ``Linear``'s (out, in).
  ``resid_dropout`` is GPT-2's ``resid_pdrop``.

* :class:`GatedMLP`, the SwiGLU block of Llama and Qwen2 (``mlp.gate_proj``,
  ``mlp.up_proj``, ``mlp.down_proj``, no biases)::

      x --gate_proj--\\
                      silu_mul --> (B, T, I) --down_proj--> (B, T, C)
      x --up_proj----/

  ``ops.silu_mul(gate, up) = silu(gate) * up``: one branch gates the other
  elementwise, in one fused op. I (``intermediate_size``) is typically about 8C/3
  rounded, so the three matrices cost what GPT-2's two do at 4C.

  For decoding, :meth:`GatedMLP.fuse_projections` stacks gate and up into one matrix
  (``components/fused.py``): one product of 2I rows, split into two views.

The arguments are the Hugging Face config keys: ``hidden_size``, ``intermediate_size``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_course import ops
from llm_course.models.components.checks import positive_int, probability
from llm_course.models.components.fused import FusedProjection, use_fused
from llm_course.models.components.linear import Linear


class MLP(nn.Module):
    """GPT-2's MLP: x (B, T, C) -> (B, T, C).

    ``MLP(hidden_size, intermediate_size=4 * hidden_size, bias=True, resid_dropout=0.0)``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int | None = None, *, bias: bool = True, resid_dropout: float = 0.0):
        super().__init__()
        self.hidden_size = positive_int("MLP", "hidden_size", hidden_size)
        inter = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.intermediate_size = positive_int("MLP", "intermediate_size", inter)
        self.c_fc = Linear(hidden_size, self.intermediate_size, bias=bias)
        self.c_proj = Linear(self.intermediate_size, hidden_size, bias=bias)
        self.dropout = nn.Dropout(probability("MLP", "resid_dropout", resid_dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ops.gelu_tanh(self.c_fc(x))  # (B, T, I)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class GatedMLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``. x (B, T, C) -> (B, T, C).

    ``GatedMLP(hidden_size, intermediate_size, bias=False)`` (``bias`` is Llama's ``mlp_bias``).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, bias: bool = False):
        super().__init__()
        self.hidden_size = positive_int("GatedMLP", "hidden_size", hidden_size)
        self.intermediate_size = positive_int("GatedMLP", "intermediate_size", intermediate_size)
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.fused_gate_up: FusedProjection | None = None  # set by fuse_projections(): gate and up in one product

    def fuse_projections(self) -> None:
        """For inference: gate_proj and up_proj as one 2I-row product (``components/fused.py``)."""
        self.fused_gate_up = FusedProjection([self.gate_proj, self.up_proj])

    def unfuse_projections(self) -> None:
        if self.fused_gate_up is not None:
            self.fused_gate_up.unfuse()
            self.fused_gate_up = None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.fused_gate_up is not None:  # .to() / .half() gave the projections new tensors: stack those
            self.fused_gate_up = self.fused_gate_up.fuse_again()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(self, self.fused_gate_up):
            gate, up = self.fused_gate_up.split(self.fused_gate_up(x))  # (B, T, I) each, views of (B, T, 2I)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, I) each
        h = ops.silu_mul(gate, up)  # (B, T, I)
        return self.down_proj(h)  # (B, T, C)
